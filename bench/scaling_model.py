"""Throughput of a switch split into network processes and one ledger process per school group,
on C cores, from measured per-request CPU: a model, printed as the tables of docs/SCALING.md.

    .venv/bin/python bench/scaling_model.py

Reads bench/results/stages.json (bench/stages.py) and the end-to-end runs
bench/results/switch_closed.json and bench/results/bare_closed.json (bench/run_e2e.py).

- A network process (sockets, framing, tags, msgpack, sessions; trio) costs what the bare
  server cost per request end to end, plus its end of the IPC to the ledger process.
- A ledger process (execute and group commit for its schools) costs, in the *stages* estimate,
  execute + commit CPU + its end of the IPC; in the *calibrated* estimate, what the whole
  switch cost per authorization minus what the bare server cost, plus its end of the IPC
  (so everything the switch does beyond the network path is charged to the ledger).
- Throughput on C cores = min(network processes x 1e6 / network µs,
  ledger processes x 1e6 / ledger µs), with one core kept for the kernel, the forwarder and
  housekeeping, every process on a core of its own, and load spread evenly over the school
  groups; the number of ledger processes is the one that maximizes it.
"""

import argparse
import json
import pathlib
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CORES = (8, 16, 64)
SCHOOL_GROUPS = (1, 2, 4, 8, 16)   # fewer groups than the best split: the ledgers bound it
RESERVED_CORES = 1
IPC_BATCH = "100"        # requests per IPC message under load (bench/stages.py --ipc-batches)


def per_request_us(stages: dict, switch: dict, bare: dict) -> dict:
    ipc = stages["ipc"][IPC_BATCH]
    network = bare["server_cpu_us_per_tx"] + ipc["network"]["best_us"]
    return {
        "network": network,
        "ledger_stages": (stages["execute"]["best_us"] + stages["commit_cpu"]["best_us"]
                          + ipc["ledger"]["best_us"]),
        "ledger_calibrated": (switch["server_cpu_us_per_tx"] - bare["server_cpu_us_per_tx"]
                              + ipc["ledger"]["best_us"]),
    }


def split(cores: int, ledgers: int, network_us: float, ledger_us: float) -> dict:
    """`ledgers` ledger processes and every other usable core a network process."""
    networks = cores - RESERVED_CORES - ledgers
    network_capacity = networks * 1e6 / network_us
    ledger_capacity = ledgers * 1e6 / ledger_us
    return {"cores": cores, "ledger_processes": ledgers, "network_processes": networks,
            "tx_per_s": min(network_capacity, ledger_capacity),
            "network_capacity": network_capacity, "ledger_capacity": ledger_capacity,
            "bound": "ledger" if ledger_capacity <= network_capacity else "network"}


def best_split(cores: int, network_us: float, ledger_us: float) -> dict:
    return max((split(cores, ledgers, network_us, ledger_us)
                for ledgers in range(1, cores - RESERVED_CORES)),
               key=lambda each: each["tx_per_s"])


def model(stages: dict, switch: dict, bare: dict) -> dict:
    costs = per_request_us(stages, switch, bare)
    estimates = {}
    for name in ("ledger_calibrated", "ledger_stages"):
        estimates[name] = {
            "ledger_us": costs[name],
            "one_school_group_tx_per_s": 1e6 / costs[name],
            "splits": [best_split(cores, costs["network"], costs[name]) for cores in CORES],
            "by_school_groups": [[split(cores, groups, costs["network"], costs[name])
                                  for cores in CORES]
                                 for groups in SCHOOL_GROUPS]}
    return {"network_us": costs["network"], "today_one_process_tx_per_s": switch["tx_per_s"],
            "estimates": estimates}


def _print(result: dict) -> None:
    print(f"network process: {result['network_us']:.1f} µs CPU per request")
    for name, estimate in result["estimates"].items():
        print(f"\n{name}: ledger process {estimate['ledger_us']:.1f} µs per request, one school "
              f"group at most {estimate['one_school_group_tx_per_s']:,.0f} tx/s")
        print("| cores | ledger processes (school groups) | network processes | tx/s | bound |")
        print("|---:|---:|---:|---:|---|")
        for best in estimate["splits"]:
            print(f"| {best['cores']} | {best['ledger_processes']} | "
                  f"{best['network_processes']} | {best['tx_per_s']:,.0f} | {best['bound']} |")
        print("\n| school groups | " + " | ".join(f"{cores} cores" for cores in CORES) + " |")
        print("|---:|" + "---:|" * len(CORES))
        for row in estimate["by_school_groups"]:
            cells = [f"{each['tx_per_s']:,.0f}" if each["network_processes"] > 0 else "–"
                     for each in row]
            print(f"| {row[0]['ledger_processes']} | " + " | ".join(cells) + " |")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=str(RESULTS / "stages.json"))
    parser.add_argument("--switch", default=str(RESULTS / "switch_closed.json"))
    parser.add_argument("--bare", default=str(RESULTS / "bare_closed.json"))
    parser.add_argument("--json-out")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    loaded = [json.loads(pathlib.Path(path).read_text())
              for path in (args.stages, args.switch, args.bare)]
    result = model(*loaded)
    _print(result)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The end-of-run report: a dict for --report-json, and the same as text for people."""

import json


def _ms(value) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def write_json(path: str, report: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, ensure_ascii=False, indent=1, default=str)
        handle.write("\n")


def text(report: dict) -> str:
    lines = []
    add = lines.append
    cfg = report["config"]
    add(f"== One-card terminal simulator: scenario {cfg['scenario']}, {cfg['mode']} loop, "
        f"{cfg['terminals']} terminals, {cfg['students']} students, {cfg['seconds']:.0f} s"
        + (f", offered {cfg['rate']:.0f} tx/s average (lunch-rush curve)"
           if cfg["mode"] == "open" else ""))
    fleet = report["fleet"]
    add("   fleet: " + ", ".join(f"{n} {k}" for k, n in fleet.items()))
    prov = report.get("provisioning") or {}
    if prov:
        add(f"   provisioning: {prov['requests']} requests in {prov['seconds']:.2f} s "
            f"({prov['requests'] / max(prov['seconds'], 1e-9):.0f}/s); {prov['students']} "
            f"students, {prov['rooms']} room accounts, {prov['virtual_cards']} virtual cards; "
            f"shared account in CUIK building 9 -> {prov['split_building_shared_account']}")
    if report.get("sign_on"):
        s = report["sign_on"]
        add(f"   sign-on: {s['signed_on']} of {s['terminals']} connections in {s['seconds']:.2f} s")
    add("")
    add(f"== Throughput: {report['requests']} replies, {report['throughput_tps']:.0f} tx/s over "
        f"the {cfg['seconds']:.0f} s load window ({report['ok_tps']:.0f} ok/s); "
        f"{report['replies_total']} replies in all")
    cpu = report.get("cpu_during_load") or {}
    if cpu:
        switch = (f"switch {cpu['switch_s']} s ({cpu['switch_us_per_reply']} µs/reply)"
                  if cpu.get("switch_us_per_reply") is not None else
                  "switch not measured (a switch the simulator did not start: give "
                  "--switch-pid)")
        add(f"   CPU over the window: simulator {cpu['simulator_s']} s "
            f"({cpu['simulator_us_per_reply']} µs/reply), {switch}")
    if cfg["mode"] == "open":
        add(f"   offered: {report['offered']} arrivals; unsent when the run ended: "
            f"{report['events'].get('arrivals_unsent_at_end', 0)}")
    lat = report["latency_ms"]
    add(f"== Latency (ms, {'from the intended send time: corrected for coordinated omission' if cfg['mode'] == 'open' else 'from the send'}), "
        f"{lat['count']} replies:")
    add(f"   p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  "
        f"p99.9 {_ms(lat['p99_9'])}  max {_ms(lat['max'])}")
    for kind, block in report["latency_by_type_ms"].items():
        add(f"   {kind:10} n={block['count']:<8} p50 {_ms(block['p50']):>7}  p99 "
            f"{_ms(block['p99']):>7}  p99.9 {_ms(block['p99_9']):>7}  max {_ms(block['max']):>7}")
    add("== Result codes: " + ", ".join(f"{c} {n}" for c, n in report["codes"].items()))
    for kind, codes in report["by_type"].items():
        add(f"   {kind:10} " + ", ".join(f"{c} {n}" for c, n in
                                        sorted(codes.items(), key=lambda item: -item[1])))
    lost = report["lost_cards"]
    add(f"== Lost cards: {lost['reported']} reported mid-run; {lost['taps_after_lost']} later taps, "
        f"{lost['refused_card_lost']} refused card_lost, {lost['violations']} violations")
    rech = report["recharges"]
    add(f"== Recharges: {rech['notifications_sent_twice']} WeChat Pay notifications sent twice, "
        f"{rech['replays']} answered as replays (paid once)")
    dorm = report["dorm"]
    add(f"== Dorm rooms: {dorm['cutoffs']} power cut-offs, {dorm['restores']} restores by recharge")
    if report.get("outage"):
        o = report["outage"]
        add("")
        add(f"== Outage: switch {o['kill_signal']} at {o['kill_at_s']:.1f} s, down "
            f"{o['down_s']:.1f} s, ready again {o['restart_to_ready_s']:.2f} s after restart")
        add(f"   offline taps while down: {o['offline_taken']} (refused by the tills' own "
            f"blacklist: {o['offline_refused_locally']})")
        add(f"   reconnected: {o['reconnected']} of {o['terminals']} in "
            f"{_ms(o['all_reconnected_s'])} s; uploads: {o['offline_records_uploaded']} records in "
            f"{o['offline_requests']} requests, {o['offline_ok']} ok ({o['offline_replay']} "
            f"replays), {o['offline_refused']} refused, {o['offline_after_lost']} after_lost, "
            f"{o['overdrawn_accounts']} accounts overdrawn")
        add(f"   in flight at the kill: {o['uncertain']} requests, resent with their ids: "
            f"{o['uncertain_resolved']} answered {o['uncertain_codes']}")
        add(f"   time to drain (restart -> every upload and resend answered): "
            f"{_ms(o['drain_s'])} s, {_ms(o['drain_after_ready_s'])} s after the switch was "
            f"ready ({o['drained']} of {o['uploaders']} terminals had something to upload)")
        add(f"   nothing lost: {'yes' if o['nothing_lost'] else 'NO'}")
    add("")
    money = report["money_check"]
    add(f"== Money check: {money.get('accounts', 0)} accounts (those the simulator made), "
        f"{money.get('mismatches', '?')} "
        f"mismatches; simulator ledger {money.get('expected_total_fen')} fen, switch "
        f"{money.get('switch_total_fen')} fen")
    for example in money.get("examples", [])[:5]:
        add(f"   {example}")
    audit = report["audit"]
    if not audit.get("skipped"):
        # The summary's first line is its verdict, said once here.
        details = audit.get("summary", "").partition("\n")[2]
        add(f"== Audit: {'sound' if audit.get('sound') else 'NOT SOUND'}: "
            f"{details.replace(chr(10), '; ')}")
    if report["errors"]:
        add("== Errors: " + ", ".join(f"{k} {v}" for k, v in report["errors"].items()))
    add(f"== Verdict: {'PASS' if report['ok'] else 'FAIL'}"
        + ("" if report["ok"] else f" ({'; '.join(report['failures'])})"))
    return "\n".join(lines)

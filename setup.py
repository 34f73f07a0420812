"""Packaging for the one-card switch. The authorization core, the frames' HMAC and the
write-back's key order are compiled with Cython."""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension("switch.core._authorize", ["switch/core/_authorize.pyx"],
              extra_compile_args=["-O2"]),
    # The frames' HMAC on the x86 SHA extensions (switch/codec/mac.py falls back to hashlib).
    Extension("switch.codec._frame_key", ["switch/codec/_frame_key.pyx"],
              depends=["switch/codec/_sha256_x86.h"], extra_compile_args=["-O2"]),
    # A write-back round's keys put in order a run at a time (switch/persistence/key_order.py
    # has the Python reference it is checked against).
    Extension("switch.persistence._key_order", ["switch/persistence/_key_order.pyx"],
              extra_compile_args=["-O2"]),
]

setup(
    name="campus-card-switch",
    version="0.1.0",
    description="Transaction switch for a university one-card system",
    python_requires=">=3.11",
    packages=find_packages(include=["switch", "switch.*"]),
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False}),
    install_requires=[
        "trio>=0.25",
        "msgpack>=1.0",
        "lmdb>=1.4",
        "prometheus-client>=0.20",
        # Schools' local days need their time zone; a minimal machine may have no zoneinfo.
        "tzdata",
        # Secrets at rest: AES-GCM for credential keys, QR secrets and remembered replies.
        "cryptography>=42",
    ],
    extras_require={
        # hdrhistogram: the simulator's latency percentiles (HdrHistogram: exact tails, mergeable);
        # pytest-benchmark: bench/test_micro.py.
        "test": ["pytest>=8", "pytest-trio>=0.8", "hypothesis>=6.100", "hdrhistogram>=0.10",
                 "pytest-benchmark>=4"],
        # matplotlib: the PNG plots that `make demo` and bench/run_e2e.py draw; uvloop: the
        # second ceiling of bench/run_e2e.py (bench/bare_server.py --loop uvloop), what Python
        # itself can do on the network path. The switch never imports it.
        "bench": ["matplotlib>=3.7", "hdrhistogram>=0.10", "uvloop>=0.19"],
    },
    entry_points={"console_scripts": ["switch=switch.cli.main:run"]},
)

"""Install: `pip install -e .` (library + CLI) or `pip install -e ".[test]"` (tests)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("tfrec_proxy").joinpath("version.py")
                    .read_text()).group(1)

BEAM = "apache-beam[tfrecord]==2.77.0"  # [tfrecord]: CRC32C for TFRecords

setup(
    name="tfrec_proxy",
    version=VERSION,
    description=("Two-tower retrieval on TensorFlow Recommenders for long-tailed, "
                 "multi-interest catalogues."),
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfrec_proxy", "tfrec_proxy.*"]),
    # TF 2.20 and ScaNN 1.4.2 publish wheels for CPython 3.11-3.13.
    python_requires=">=3.11,<3.14",
    # Pinned together: ScaNN 1.4.2's TF ops are built for TF 2.20 (they fail to load
    # on 2.21), and TFRS 0.7.7 needs Keras 2 (tf-keras).
    install_requires=[
        "tensorflow==2.20.0",
        "tf-keras==2.20.1",
        "tensorflow-recommenders==0.7.7",
        "scann==1.4.2",
        "numpy",
        "pandas",
        "pyarrow>=15,<27",        # Parquet interaction tables
        "matplotlib>=3.8,<4",     # `tfrec-proxy report` plots
        "fastapi==0.165.0",       # `tfrec-proxy serve`: TF Serving's REST API
        "uvicorn==0.54.0",
    ],
    extras_require={
        # `pipelines/beam_preprocess.py`: preprocessing at scale (resolves beside TF 2.20).
        "beam": [BEAM],
        "test": ["pytest>=8,<10",
                 "httpx==0.28.1",         # real HTTP requests to a served run
                 "hypothesis==6.170.17",  # property tests of the input paths
                 BEAM],                   # the Beam pipeline's DirectRunner tests
    },
    entry_points={"console_scripts": ["tfrec-proxy=tfrec_proxy.cli:main"]},
)

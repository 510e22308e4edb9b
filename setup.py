"""tvts: TVTSv2 video-text pretraining and frozen-backbone evaluation in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="tvts",
    version="0.1.0",
    description="TVTSv2 video-text pretraining at TPU-pod scale, in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["tvts", "tvts.*"]),
    package_data={"tvts.data": ["vocab/*"], "tvts.data.builders": ["classes/*.txt"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9,<4.10",
        # TFDS without TensorFlow: ArrayRecord files (tvts/data/builders) and its resource lookups
        "array_record>=0.5",
        "grain>=0.2.18",  # the file loader (tvts/data/loader.py)
        "importlib_resources>=6.0",
        "einops>=0.8",
        "ml-collections>=1.0",
        "etils[epath]>=1.7",
        "numpy>=1.26",
        "av>=12",
        "pillow>=10",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "ftfy>=6.1",
        "regex>=2023.0",
        "flatbuffers>=24",  # jax.export serialisation (tvts.export, tvts.backbone)
        "tokenizers>=0.15",  # WordPiece for TVTS v1's DistilBERT text tower (tvts/data/wordpiece.py)
        "faiss-cpu>=1.8,<2",  # k-means of the PQ / OPQ baselines (tvts/codes)
        # mimalloc for XLA:CPU's per-step temporaries (tvts/allocator.py); Linux wheels only
        "cmeel-mimalloc>=3.0,<4; platform_system == 'Linux'",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "ruff>=0.6"],
        # converters' torch formats and parity tests; torch pinned: 2.13.0 is a CPU build on this machine's disk,
        # an unpinned install pulls several GB of CUDA packages. (.safetensors are read without any of these.)
        "convert": ["torch==2.13.0", "transformers>=4.40", "safetensors>=0.4"],
    },
)

"""distill-sbs: distilling step-by-step, FIRST and UL2R for T5 students in JAX."""
import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",
    "clu==0.0.12",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "numpy",
    "protobuf",
    "ml_dtypes",
    "scipy",
    "matplotlib",
    "openai",
    "tqdm",
    "safetensors",
    "tokenizers==0.23.3",
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "hypothesis==6.170.17",
    "torch==2.13.0",
    "transformers==5.24.0",
]

setuptools.setup(
    name="distill-sbs",
    version="0.1.0",
    description="Distilling step-by-step, FIRST and UL2R for T5 students in JAX/Flax.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["distill_sbs", "distill_sbs.*"]) + ["distill_sbs.tasks"],
    package_dir={"distill_sbs.tasks": "tasks"},
    package_data={"distill_sbs.tasks": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["distill-sbs=distill_sbs.cli:main"]},
)

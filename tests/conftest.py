"""Shared fixtures: offline mode, tiny random-init models, a small synthetic dataset."""

import os

# Before any Hugging Face import: the tests never reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import ResNetForImageClassification  # noqa: E402

from .testing_utils import synthetic_dataset, tiny_resnet  # noqa: E402


@pytest.fixture
def student() -> ResNetForImageClassification:
    return tiny_resnet(seed=1)


@pytest.fixture
def teacher() -> ResNetForImageClassification:
    return tiny_resnet(wide=True, seed=2)


@pytest.fixture
def train_dataset() -> Dataset:
    return synthetic_dataset(16, seed=0)


@pytest.fixture
def eval_dataset() -> Dataset:
    return synthetic_dataset(8, seed=1)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: computes as a launched process with OMP_NUM_THREADS=1 does (to the bit), and
    tiny models on 2 shared cores run steadier than on two threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These models are small: one thread is fastest, and with other work on the machine
    OpenMP threads can make a step tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""The parts of FSDP2 sharding that need no process group: which blocks are sharded, which meshes are refused."""

from __future__ import annotations

import pytest
from torch import nn

from xpert_pl.errors import ConfigError
from xpert_pl.models import DenseStudent, OlmoeSource
from xpert_pl.training.sharding import _data_parallel_mesh, decoder_layers


def test_decoder_layers_are_the_repeated_blocks():
    student = DenseStudent("llama-tiny").build(vocab_size=64)
    assert decoder_layers(student) == list(student.model.layers)
    source = OlmoeSource("olmoe-tiny").build(vocab_size=64)
    assert decoder_layers(source) == list(source.model.layers)


def test_a_model_without_decoder_layers_is_refused():
    with pytest.raises(ConfigError, match=r"no decoder layer class.*ddp-bf16\.yaml"):
        decoder_layers(nn.Linear(2, 2))


class FakeMesh:
    """Stands in for a DeviceMesh: dimension names and sizes only."""

    def __init__(self, **sizes: int):
        self.sizes = sizes
        self.mesh_dim_names = tuple(sizes)

    def __getitem__(self, name: str) -> FakeMesh:
        return FakeMesh(**{name: self.sizes[name]})

    def size(self) -> int:
        return next(iter(self.sizes.values()))


def test_only_the_data_parallel_dimension_is_used():
    mesh = FakeMesh(data_parallel=4, tensor_parallel=1)
    assert _data_parallel_mesh(mesh).sizes == {"data_parallel": 4}
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2.*FSDP2Strategy"):
        _data_parallel_mesh(FakeMesh(data_parallel=2, tensor_parallel=2))

"""Processors installed on a diffusers network's attention layers for one call, then put back.

diffusers' ``attn_processors`` / ``set_attn_processor`` walk the whole module tree on every call (on the
miniature UNet that walk, three times a step, cost a fifth of the step). The layers are found once per
network here, and each call swaps only their processors.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch

_LAYERS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def attention_layers(net: torch.nn.Module) -> dict:
    """``{processor name: attention module}`` in diffusers' ``attn_processors`` order, found once per network."""
    layers = _LAYERS.get(net)
    if layers is None:
        layers = _LAYERS[net] = {name: net.get_submodule(name.rsplit(".", 1)[0]) for name in net.attn_processors}
    return layers


@contextmanager
def processors_installed(net: torch.nn.Module, processors: dict):
    """Within the block, each attention layer of ``net`` runs ``processors[its processor name]``; after it
    (also on an error) each runs what it ran before."""
    layers = attention_layers(net)
    if processors.keys() != layers.keys():
        raise ValueError(f"processors for {sorted(set(processors) ^ set(layers))[:3]}... do not match the network's layers")
    saved = {name: module.processor for name, module in layers.items()}
    try:
        for name, module in layers.items():
            module.set_processor(processors[name])
        yield
    finally:
        for name, module in layers.items():
            module.set_processor(saved[name])


def parameter_dtype(net: torch.nn.Module) -> torch.dtype:
    """The dtype of the network's weights (diffusers' ``.dtype`` walks every module to find it)."""
    return next(net.parameters()).dtype

"""Simulated analog arrays: RPU devices (configuration, the array ops, arrays per kernel
replica) and hybrid in-memory computing with PCM devices (hic)."""
from typing import Union

from .arrays import AnalogArrays, ArrayProducts, analog_conv
from .config import (ConstantStepDevice, GokmenVlasov2016, IOParameters, MappingParameters,
                     PRESETS, Rasch2019, Rasch2019Device, RPUConfig, UpdateParameters,
                     from_proto, perfect)
from .hic import HICArrays, HICConfig, hic_from_proto
from .ops import analog_mvm, rpu_update


def make_arrays(config: Union[RPUConfig, HICConfig], shape: tuple[int, int, int]) -> ArrayProducts:
    """The arrays a configuration describes: AnalogArrays for an RPUConfig, HICArrays for a
    HICConfig, T x O x K weights (`shape`)."""
    return (HICArrays if isinstance(config, HICConfig) else AnalogArrays)(config, shape)


__all__ = ["AnalogArrays", "ArrayProducts", "HICArrays", "HICConfig", "hic_from_proto",
           "make_arrays", "analog_conv", "ConstantStepDevice", "GokmenVlasov2016",
           "IOParameters", "MappingParameters", "PRESETS", "Rasch2019", "Rasch2019Device",
           "RPUConfig", "UpdateParameters", "from_proto", "perfect", "analog_mvm", "rpu_update"]

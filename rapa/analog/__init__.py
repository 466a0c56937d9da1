"""Simulated analog (RPU) arrays: configuration, the array ops, and arrays per kernel replica."""
from .arrays import AnalogArrays, analog_conv
from .config import (ConstantStepDevice, GokmenVlasov2016, IOParameters, MappingParameters,
                     PRESETS, Rasch2019, Rasch2019Device, RPUConfig, UpdateParameters,
                     from_proto, perfect)
from .ops import analog_mvm, rpu_update

__all__ = ["AnalogArrays", "analog_conv", "ConstantStepDevice", "GokmenVlasov2016",
           "IOParameters", "MappingParameters", "PRESETS", "Rasch2019", "Rasch2019Device",
           "RPUConfig", "UpdateParameters", "from_proto", "perfect", "analog_mvm", "rpu_update"]

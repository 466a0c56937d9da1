"""Hybrid in-memory computing (HIC; Joshi, He, Seo, Rajendran 2021, arXiv:2102.05271): each
weight held by binary and multi-level phase-change memory (PCM) devices and trained through a
low-precision digital update accumulator.

Representation, per weight, as an integer v in units of one least significant step (LSB):
    v = U * M + B,   B = sum_i b_i c_i  (binary cells c_i in {0, 1}, bit weights b_i),
                     M = m+ - m-       (a differential pair of multi-level devices, levels
                                        m+, m- in [0, L - 1]),
with U = sum_i b_i + 1 (one step of the multi-level part is a carry out of the binary part).
The layer's weight is W = delta * v, delta = max(max|W_t|, weight_range) / ((L - 1) U) per
array t, set when the weights are written (fillers, a digital model): v ranges over
[-(L - 1) U, (L - 1) U + U - 1].

Products read the devices: binary cell i conducts c_i g_i (g_i its programmed SET
conductance, nominally g_max), the pair g+ - g- (programmed to m g_max / (L - 1)), and the
array's normalized weight w = (sum_i b_i g_i / g_max + U (g+ - g-) (L - 1) / g_max) / ((L - 1) U)
(|w| <= about 1) goes through the periphery of the existing analog arrays (rapa.analog_mvm:
DAC, ADC, noise, bounds), its outputs scaled digitally by alpha_t = delta (L - 1) U. With
ideal devices (no programming noise) w * (L - 1) U is v exactly.

Training (apply_update): the weight gradient is computed digitally from the recorded rows, and
its SGD step -lr dL/dW, in LSB units, is added to a per-weight accumulator of
`accumulator_bits` signed bits with `accumulator_frac_bits` below the LSB (stochastic or
nearest rounding, saturating). Whole LSBs are then taken out of it (towards zero) and
transferred: added to B with carries and borrows into M; binary cells that change are SET or
RESET (each attempt switches with set_probability / reset_probability, and is repeated until it
does, as a program-and-verify loop would); a multi-level change SETs the pair's G+ (increase)
or G- (decrease) to its next level, as a differential pair of SET-only devices does
(Nandakumar et al. 2018/2020; aihwkit's OneSidedUnitCell), and where that device would pass
its top level the pair is refreshed: both RESET, and |M| programmed onto one of them. v
saturates at its range (counted). Every SET and RESET event of every device is counted
(`set_count`, `reset_count`), against `endurance`.

A binary cell's SET or RESET draws aihwkit's statistical programming noise
(PCMLikeNoiseModel.program: the fit of Nandakumar et al. 2019 on iteratively programmed
devices) around g_max or 0. A multi-level device reaches its level by `programming`:
"statistical" (default): that same noise around the level's conductance; "pulsed": SET pulses
with the state-dependent, stochastic increments of aihwkit's PCMPresetDevice, pulse-and-verify,
each pulse counted as a SET event, and a RESET that leaves the device near zero, each device
with its own step size, bound and RESET state (rapa.analog.pcm_pulses). Not modelled (ours:
documented simplifications): drift and read noise during training (they apply after it:
`rapa test --drift-time`), the separate periphery of each bit's array (one periphery reads the
combined weight).

Defaults are ours, since the paper's split of bits and its accumulator are not public: 4
binary cells (bit weights 1, 2, 4, 8) and a pair of 4-level (2-bit) devices, 8 bits held in
devices per weight, so that a network twice as wide (four times the weights) holds as many
bits as the FP32 one (the abstract's "comparable model size" at a width multiplier); an 8-bit
accumulator with 4 fraction bits; endurance 1e8 cycles (the middle of the 1e6-1e9 commonly
given for PCM).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import RapaError
from .arrays import ArrayProducts, ConvInputs
from .config import IOParameters, check_finite
from .pcm import PCMLikeNoiseModel
from .pcm_pulses import PCMPresetDevice

STATE_NAMES = ("accumulator", "bits", "g_binary", "levels", "g_pair", "set_count",
               "reset_count", "out_scale", "saturations")
PULSED_STATE_NAMES = ("pulse_draws",)
PROGRAMMING = ("statistical", "pulsed")
_COUNT_LIMIT = 2 ** 24  # counts are float32 state blobs: exact up to here


@dataclass
class HICConfig:
    """One layer's HIC arrays (hic_param): the representation, the accumulator, the devices'
    switching and statistics, and the periphery of the products."""

    binary_cells: int = 4
    """Binary PCM cells per weight: its least significant part (ours: 4)."""
    bit_weights: tuple[int, ...] = ()
    """The cells' weights in LSBs, ascending from 1, each at most 1 + the sum of those before
    (every value up to their sum is then held, greedily from the top); empty: 1, 2, 4, ...
    In hic_param, bit_weights alone also sets binary_cells to their count."""
    levels: int = 4
    """Levels L of each multi-level device of the pair (ours: 4, 2 bits), >= 2."""
    accumulator_bits: int = 8
    """Signed bits of the digital update accumulator (ours: 8), 2 to 32."""
    accumulator_frac_bits: int = 4
    """Of those, the bits below one LSB: its resolution is 2^-frac LSB (ours: 4)."""
    stochastic_rounding: bool = True
    """Updates round to the accumulator's resolution stochastically (unbiased), else to
    nearest."""
    weight_range: float = 0.0
    """The largest |weight| (layer units) the representation must hold; 0: each array's
    largest written weight (as MappingParameters.weight_range)."""
    set_probability: float = 1.0
    """Chance that one SET attempt switches a binary cell from 0 to 1 (1: always)."""
    reset_probability: float = 1.0
    """Chance that one RESET attempt switches a binary cell from 1 to 0."""
    endurance: float = 1e8
    """Write-erase cycles a device survives (ours: 1e8), what the counts are compared to."""
    pcm: PCMLikeNoiseModel = field(default_factory=PCMLikeNoiseModel)
    """The devices' programming: g_max and the programming noise (prog_* fields; hic_param
    sets g_max and prog_noise_scale). Drift and read noise apply after training, from rapa
    test --drift-time's model, with this g_max."""
    programming: str = "statistical"
    """How a multi-level device reaches a level: "statistical" (pcm's programming noise
    around it) or "pulsed" (SET pulses of `pulse`, pulse-and-verify)."""
    pulse: PCMPresetDevice = field(default_factory=PCMPresetDevice)
    """The multi-level devices' SET-pulse response with programming "pulsed" (aihwkit's
    PCMPresetDevice; its w_max is g_max)."""
    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(
        default_factory=lambda: IOParameters(bound_management="none"))

    def weights(self) -> tuple[int, ...]:
        return tuple(self.bit_weights) or tuple(2 ** i for i in range(self.binary_cells))

    @property
    def capacity(self) -> int:
        """U: one step of the multi-level part, in LSBs."""
        return sum(self.weights()) + 1

    @property
    def span(self) -> int:
        """(L - 1) U: the LSBs that the largest |weight| maps to."""
        return (self.levels - 1) * self.capacity

    def device_bits(self) -> float:
        """Bits held in devices per weight: one per binary cell, log2 L per multi-level
        device (two)."""
        return self.binary_cells + 2 * math.log2(self.levels)

    def check(self, where: str = "hic_param") -> None:
        """ValueError naming `where` and the field when a value makes no representation."""
        if not 0 <= self.binary_cells <= 16:
            raise ValueError(f"{where}: binary_cells must be in [0, 16], got {self.binary_cells}")
        if self.bit_weights:
            w = list(self.bit_weights)
            if len(w) != self.binary_cells:
                raise ValueError(f"{where}: bit_weights gives {len(w)} weights for "
                                 f"{self.binary_cells} binary_cells")
            below = 0
            for i, b in enumerate(w):
                if not 1 <= b <= below + 1:
                    raise ValueError(f"{where}: bit_weights[{i}] = {b} must be in [1, "
                                     f"{below + 1}] (1 + the weights before it), so that every "
                                     f"value up to their sum is held")
                below += b
        if not 2 <= self.levels <= 1024:
            raise ValueError(f"{where}: levels must be in [2, 1024], got {self.levels}")
        if self.span > 2 ** 24:
            raise ValueError(f"{where}: (levels - 1) x (sum of bit weights + 1) = {self.span} "
                             f"LSBs is beyond float32's exact integers (2^24)")
        if not 2 <= self.accumulator_bits <= 32:
            raise ValueError(f"{where}: accumulator_bits must be in [2, 32], got "
                             f"{self.accumulator_bits}")
        if not 0 <= self.accumulator_frac_bits <= self.accumulator_bits - 2:
            raise ValueError(f"{where}: accumulator_frac_bits must be in [0, accumulator_bits - "
                             f"2 = {self.accumulator_bits - 2}] (one sign bit, at least one "
                             f"LSB), got {self.accumulator_frac_bits}")
        check_finite(self, [
            ("weight_range", 0 <= self.weight_range <= 1e6, "in [0, 1e6]"),
            ("set_probability", 0.01 <= self.set_probability <= 1, "in [0.01, 1]"),
            ("reset_probability", 0.01 <= self.reset_probability <= 1, "in [0.01, 1]"),
            ("endurance", self.endurance >= 1, ">= 1")], where)
        if self.programming not in PROGRAMMING:
            raise ValueError(f"{where}: programming must be one of {', '.join(PROGRAMMING)}, "
                             f"got '{self.programming}'")
        self.pulse.check(f"{where}: pulse")
        if self.programming == "pulsed":
            self.pulse.check_levels(self.levels, f"{where}: pulse")
        try:
            self.pcm.check(f"{where}: pcm")
        except RapaError as err:
            raise ValueError(str(err)) from None
        self.forward.check(f"{where}: forward")
        self.backward.check(f"{where}: backward")

    def limits(self) -> tuple[float, float]:
        """The accumulator's saturation, in LSBs, and its resolution."""
        res = 2.0 ** -self.accumulator_frac_bits
        return (2 ** (self.accumulator_bits - 1) - 1) * res, res


def hic_from_proto(msg, where: str = "hic_param") -> HICConfig:
    """A HICConfig from a HICParameter message: the defaults, then every field it sets."""
    config = HICConfig()
    for fd, value in msg.ListFields():
        if fd.name in ("forward", "backward", "pcm", "pulse"):
            target = getattr(config, fd.name)
            for sub_fd, sub_value in value.ListFields():
                setattr(target, sub_fd.name, _plain(sub_fd, sub_value, getattr(target,
                                                                             sub_fd.name)))
        elif fd.name == "bit_weights":
            config.bit_weights = tuple(int(v) for v in value)
            if not msg.HasField("binary_cells"):  # the weights given say how many cells
                config.binary_cells = len(config.bit_weights)
        else:
            setattr(config, fd.name, _plain(fd, value, getattr(config, fd.name)))
    if msg.HasField("pulse") and config.programming != "pulsed":
        raise ValueError(f"{where}: pulse is given, but programming is "
                         f"'{config.programming}': pulse applies with programming: \"pulsed\"")
    config.check(where)
    return config


def _plain(fd, value, default):
    if fd.type == fd.TYPE_FLOAT:  # the decimal written, not its float32 neighbour
        value = float(str(np.float32(value)))
    return type(default)(value)


@functools.lru_cache(maxsize=None)
def _powers(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return 2.0 ** torch.arange(n, dtype=dtype, device=device)


def encode(value: Tensor, weights: tuple[int, ...]) -> Tensor:
    """The binary cells (len(weights), *value.shape) that hold `value` (integers in [0, sum of
    weights]), greedily from the largest weight."""
    if weights == tuple(2 ** i for i in range(len(weights))):  # the default: binary digits
        powers = _powers(len(weights), value.dtype, value.device)
        return torch.div(value.unsqueeze(0), powers.view(-1, *[1] * value.dim()),
                         rounding_mode="floor").remainder(2)
    rest = value.clone()
    cells = value.new_zeros((len(weights), *value.shape))
    for i in reversed(range(len(weights))):
        on = rest >= weights[i]
        cells[i] = on.to(value.dtype)
        rest = torch.where(on, rest - weights[i], rest)
    return cells


class HICArrays(ArrayProducts):
    """T HIC arrays of O x K weights (`shape`): the devices, the accumulator and the counts of
    every weight, as state blobs (STATE_NAMES) that a .caffemodel keeps after the weight.

    The module's weight (viewed (T, O, K)) holds the normalized weight w read from the devices
    (see the module's docstring), `out_scale` alpha_t = delta_t (L - 1) U. Shapes: accumulator,
    out_scale-free per-weight tensors (T, O, K); bits and g_binary (n_binary, T, O, K); levels
    and g_pair (2, T, O, K), G+ first; set_count and reset_count (n_binary + 2, T, O, K), the
    binary cells first, then G+ and G-; saturations (T,), the transfers that hit v's range.
    With programming "pulsed" also pulse_draws (3, 2, T, O, K): each multi-level device's
    step scale, upper bound and RESET state (rapa.analog.pcm_pulses, in its units)."""

    records_gradient = True  # the update needs dL/dw alone, not the rows
    holds_pcm = True

    def __init__(self, config: HICConfig, shape: tuple[int, int, int]):
        super().__init__(config, shape)
        nb = config.binary_cells
        self.register_buffer("accumulator", torch.zeros(shape))
        self.register_buffer("bits", torch.zeros((nb, *shape)))
        self.register_buffer("g_binary", torch.zeros((nb, *shape)))
        self.register_buffer("levels", torch.zeros((2, *shape)))
        self.register_buffer("g_pair", torch.zeros((2, *shape)))
        self.register_buffer("set_count", torch.zeros((nb + 2, *shape)))
        self.register_buffer("reset_count", torch.zeros((nb + 2, *shape)))
        self.register_buffer("saturations", torch.zeros(shape[0]))
        self.pulsed = config.programming == "pulsed"
        self._weights_cache: dict = {}
        if self.pulsed:  # torch's generator, as AnalogArrays' draws: seeded runs repeat
            self.register_buffer("pulse_draws", config.pulse.populate((2, *shape)))

    # -- state ------------------------------------------------------------------------------

    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES + (PULSED_STATE_NAMES if self.pulsed else ())

    def state_blobs(self) -> list[Tensor]:
        return [getattr(self, n) for n in self.state_names()]

    def state_problem(self, index: int, value: Tensor) -> Optional[str]:
        """Why `value` cannot be state blob `index` (STATE_NAMES) from a model file, or None."""
        name = self.state_names()[index]
        c = self.config
        if not torch.isfinite(value).all():
            return f"{name} must be finite"
        top, res = c.limits()
        whole = (value == value.round()).all()
        rules = {
            "accumulator": ((value.abs() <= top).all() and ((value / res) == (value / res).round()
                                                            ).all(),
                            f"on the accumulator's grid of {res:g} LSB within +-{top:g}"),
            "bits": (((value == 0) | (value == 1)).all(), "0 or 1"),
            "g_binary": ((value >= 0).all(), ">= 0 uS"),
            "levels": (whole and (value >= 0).all() and (value <= c.levels - 1).all(),
                       f"whole levels in [0, {c.levels - 1}]"),
            "g_pair": ((value >= 0).all(), ">= 0 uS"),
            "set_count": (whole and (value >= 0).all(), "whole counts >= 0"),
            "reset_count": (whole and (value >= 0).all(), "whole counts >= 0"),
            "out_scale": ((value > 0).all(), "> 0 (the arrays' digital scales)"),
            "saturations": (whole and (value >= 0).all(), "whole counts >= 0"),
        }
        if name == "pulse_draws":  # (step scale, bound, RESET state) of each device
            draws = value.reshape(3, -1)  # a file may give the shape with other 1s
            rules[name] = ((draws >= 0).all() and (draws[1] > 0).all() and
                           (draws[2] <= draws[1]).all(),
                           ">= 0, with bounds > 0 and RESET states within them")
        ok, rule = rules[name]
        return None if ok else f"{name} must be {rule}"

    # -- the representation -----------------------------------------------------------------

    def value(self, index: Optional[Tensor] = None) -> Tensor:
        """v, the integer each weight's devices are meant to hold (T, O, K), in LSBs; or, given
        `index` (flat positions in T x O x K), of those weights only."""
        c = self.config
        bits, levels = self._columns(self.bits, index), self._columns(self.levels, index)
        b = self._bit_weights(bits.dtype, bits.device)
        v = (bits * b.view(-1, 1)).sum(0) if c.binary_cells else 0.0
        v = v + c.capacity * (levels[0] - levels[1])
        return v if index is not None else v.view(self.shape)

    def read(self, index: Optional[Tensor] = None) -> Tensor:
        """The normalized weight w the devices hold (T, O, K): v / ((L - 1) U) when ideal; or,
        given `index`, of those weights only."""
        c = self.config
        g_max = c.pcm.g_max
        g_binary, g_pair = (self._columns(self.g_binary, index).double(),
                            self._columns(self.g_pair, index).double())
        binary = 0.0
        for i, b in enumerate(c.weights()):  # in order: rapa.hic_update adds them so too
            binary = g_binary[i] * float(b) if i == 0 else binary + g_binary[i] * float(b)
        if c.binary_cells:
            binary = binary / g_max
        pair = c.capacity * (c.levels - 1) * (g_pair[0] - g_pair[1]) / g_max
        w = ((binary + pair) / c.span).to(self.g_pair.dtype)
        return w if index is not None else w.view(self.shape)

    def _bit_weights(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The binary cells' bit weights as a tensor (n_binary,), made once per dtype and
        device (every update reads them)."""
        key = (dtype, device)
        if key not in self._weights_cache:
            self._weights_cache[key] = torch.tensor(self.config.weights(), dtype=dtype,
                                                    device=device)
        return self._weights_cache[key]

    def _columns(self, devices: Tensor, index: Optional[Tensor]) -> Tensor:
        """The devices (n, T, O, K) as (n, N) columns, one per weight, or those of `index`."""
        # The weights' count from the shape: with no binary cells the (0, N) view is empty.
        flat = devices.view(devices.shape[0], math.prod(devices.shape[1:]))
        return flat if index is None else flat[:, index]

    def pcm_terms(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The devices as (conductances uS, their target uS, coefficient to w): w is the sum of
        coefficient x conductance; rapa.analog.drift reads them at later times."""
        c = self.config
        g_max, per_level = c.pcm.g_max, c.capacity * (c.levels - 1) / c.span
        terms = [(self.g_pair[0], self.levels[0] * g_max / (c.levels - 1), per_level / g_max),
                 (self.g_pair[1], self.levels[1] * g_max / (c.levels - 1), -per_level / g_max)]
        for i, b in enumerate(c.weights()):
            terms.append((self.g_binary[i], self.bits[i] * g_max, b / c.span / g_max))
        return terms

    def _program(self, target: Tensor, generator) -> Tensor:
        """Conductances programmed to `target` (uS) with the PCM model's programming noise."""
        return self.config.pcm.program(target, generator)

    @torch.no_grad()
    def map_(self, weight3: Tensor, generator: Optional[torch.Generator] = None) -> int:
        """Write weights in the layer's units onto the devices, in place: delta_t from the
        array's largest |W| (or weight_range; an array of zeros with weight_range 0 takes
        delta 1 / ((L - 1) U), a range of 1), v = round(W / delta) within its range, every
        device RESET and programmed (counted), the accumulator emptied; weight3 becomes w.
        Returns how many weights saturated."""
        c = self.config
        amax = weight3.abs().amax(dim=(1, 2)).clamp_min(c.weight_range)
        delta = torch.where(amax > 0, amax / c.span, torch.ones_like(amax))
        self.out_scale.copy_(delta * c.span)
        wanted = (weight3 / delta.view(-1, 1, 1).to(weight3.dtype)).round()
        low, high = -c.span, c.span + c.capacity - 1
        v = wanted.clamp(low, high)
        self.accumulator.zero_()
        self._hold(v.to(self.levels.dtype).reshape(-1), None, generator, fresh=True)
        weight3.copy_(self.read())
        return int((v != wanted).sum())

    @torch.no_grad()
    def clip_(self, weight3: Tensor) -> int:
        """weight3 becomes what the devices read (a model's weight blob is derived from its
        devices); returns 0: devices hold no value outside their range."""
        weight3.copy_(self.read())
        return 0

    def after_load(self, weight3: Tensor, digital: bool) -> list[str]:
        """After a model is loaded into weight3: digital weights are written onto the devices
        (as the fillers' are: the range covers them, nothing saturates), a HIC model's weight
        is what its devices read. Nothing to tell the user: returns []."""
        if digital:
            # The devices' first programming is this one: the fillers' was never a model's.
            for counts in (self.set_count, self.reset_count, self.saturations):
                counts.zero_()
            self.map_(weight3)
        else:
            self.clip_(weight3)
        return []

    def _hold(self, v: Tensor, index: Optional[Tensor], generator, fresh: bool = False) -> None:
        """The weights at flat positions `index` (None: all) take v (one value each): binary
        cells switch where their bits change, the pair moves its levels (SET-only, refreshed
        where a device would pass its top level), each change programmed and counted.
        `fresh`: every device RESET and programmed anew. Only these weights' devices are
        read, drawn for and written."""
        c = self.config
        cap, top, nb = c.capacity, c.levels - 1, c.binary_cells
        columns = (lambda t: self._columns(t, index))
        set_count, reset_count = columns(self.set_count), columns(self.reset_count)
        m = torch.div(v, cap, rounding_mode="floor")
        b = v - m * cap
        if nb:
            bits, g_binary = columns(self.bits), columns(self.g_binary)
            new_bits = encode(b, c.weights())
            if fresh:
                reset_count[:nb] += 1
                set_count[:nb] += new_bits
                changed = torch.ones_like(new_bits, dtype=torch.bool)
            else:
                up, down = (new_bits > bits), (new_bits < bits)
                changed = up | down
                set_count[:nb] += self._attempts(up, c.set_probability, generator)
                reset_count[:nb] += self._attempts(down, c.reset_probability, generator)
            # Every cell drawn, the changed ones kept: no masked gather and scatter.
            g_binary = torch.where(changed, self._program(new_bits * c.pcm.g_max, generator),
                                   g_binary)
            self._store(self.bits, index, new_bits)
            self._store(self.g_binary, index, g_binary)
        levels, g_pair = columns(self.levels), columns(self.g_pair)
        plus, minus = levels[0], levels[1]
        if fresh:
            new = torch.stack([m.clamp_min(0), (-m).clamp_min(0)])
            refresh = torch.ones_like(m, dtype=torch.bool)
        else:
            old = plus - minus
            new = torch.stack([plus + (m - old).clamp_min(0), minus + (old - m).clamp_min(0)])
            refresh = (new > top).any(0)
            new = torch.where(refresh, torch.stack([m.clamp_min(0), (-m).clamp_min(0)]), new)
        # A refresh RESETs both devices, then SETs each whose level is above 0; a plain move
        # SETs a device to its higher level.
        moved = refresh | (new != levels)
        reset_count[nb:] += refresh.to(reset_count.dtype)
        if self.pulsed:
            set_count[nb:] += self._pulse_pair(g_pair, new, moved, refresh, index, generator)
        else:
            set_count[nb:] += (moved & (new > 0)).to(set_count.dtype)
            g_pair = torch.where(moved, self._program(new * c.pcm.g_max / top, generator),
                                 g_pair)
        self._store(self.levels, index, new)
        self._store(self.g_pair, index, g_pair)
        self._store(self.set_count, index, set_count)
        self._store(self.reset_count, index, reset_count)

    def _pulse_pair(self, g_pair: Tensor, new: Tensor, moved: Tensor, refresh: Tensor,
                    index: Optional[Tensor], generator) -> Tensor:
        """In place: the pair's devices (2, N columns, uS) that move go to their new levels by
        SET pulses, refreshed ones from their RESET state; returns the pulses per device."""
        c = self.config
        unit = c.pcm.g_max / c.pulse.w_max  # uS per device unit
        draws = self._columns(self.pulse_draws.view(6, *self.shape), index).view(3, 2, -1)
        scale, bound, reset = draws[0], draws[1], draws[2]
        w = g_pair / unit
        both = refresh.expand_as(w)
        if bool(refresh.any()):
            w[both] = c.pulse.after_reset(reset[both], bound[both], generator).to(w.dtype)
        pulses = torch.zeros_like(w)
        climb = moved & (new > 0)
        if bool(climb.any()):
            target = new[climb] * (c.pulse.w_max / (c.levels - 1))
            w[climb], pulses[climb] = c.pulse.program(w[climb], target.to(w.dtype),
                                                      scale[climb], bound[climb], generator)
        # Only the devices programmed: the others keep their conductances bit for bit (the
        # way to device units and back need not be exact).
        touched = both | climb
        g_pair[touched] = w[touched] * unit
        return pulses

    def _store(self, devices: Tensor, index: Optional[Tensor], columns: Tensor) -> None:
        flat = self._columns(devices, None)
        if index is None:
            if columns.data_ptr() != flat.data_ptr():
                flat.copy_(columns)
        else:
            flat[:, index] = columns

    def _attempts(self, switch: Tensor, p: float, generator) -> Tensor:
        """Attempts each switching cell takes until it switches (1 with p = 1; geometric)."""
        attempts = switch.to(self.set_count.dtype)
        if p < 1 and switch.any():
            u = torch.rand(switch.shape, generator=generator, device=switch.device,
                           dtype=torch.float64).clamp_min(1e-300)
            extra = torch.floor(torch.log(u) / math.log1p(-p)).to(attempts.dtype)
            attempts = attempts + torch.where(switch, extra, torch.zeros_like(extra))
        return attempts

    # -- training ---------------------------------------------------------------------------

    def gradient(self) -> Tensor:
        """dL/dw of the recorded passes (T, O, K), digitally: sum over rows of d x^T, per
        array (the rows' d already carry the output scale: d = alpha dL/dy), in the rows'
        precision (float32: the digital periphery's, as floating-point training's weight
        gradient). A pass recorded as its summed gradient (T, O, K) adds as it is."""
        first = self.pending[0]
        if len(self.pending) == 1 and isinstance(first, Tensor):
            return first
        x0 = first if isinstance(first, Tensor) else first[0]
        grad = torch.zeros(self.shape, dtype=x0.dtype, device=x0.device)
        for entry in self.pending:
            if isinstance(entry, Tensor):  # already summed (analog_conv's exact products)
                grad += entry
                continue
            x, d, tile = entry.rows() if isinstance(entry, ConvInputs) else entry
            if self.shape[0] == 1:
                if bool((tile < 0).any()):  # dropped patches (perforated) add nothing
                    d = d * (tile >= 0).to(d.dtype).unsqueeze(1)
                grad[0].addmm_(d.t(), x)
            else:
                for t in range(self.shape[0]):
                    rows = tile == t
                    if rows.any():
                        grad[t].addmm_(d[rows].t(), x[rows])
        return grad

    def exchanged(self) -> list:
        """The recorded passes as the processes exchange them: their summed gradient dL/dw
        (T x O x K numbers, the update needs no more), not the rows (patches x (K + O))."""
        return [self.gradient()] if self.pending else []

    @torch.no_grad()
    def apply_update(self, weight: Tensor, lr: Union[float, Tensor],
                     generator: Optional[torch.Generator] = None) -> int:
        """The HIC update of `weight` (T x O x K values, any shape of that size, in place) from
        every recorded backward pass; returns their count. The SGD step -lr dL/dW, in LSBs
        (dL/dW = dL/dw / alpha_t, one LSB = delta_t = alpha_t / ((L - 1) U)), is rounded onto
        the accumulator's grid and added (saturating); whole LSBs are transferred to the
        devices (see the module's docstring): only the weights they reach are touched.
        Rounding and switching draw from `generator` (torch's default when None), the
        solver's own in a data-parallel run. The count is of recorded entries: after a
        data-parallel exchange (exchanged) one, the passes' summed gradient. The
        accumulator's arithmetic is exact: float32 up to 24 accumulator bits (float64 rows or
        more bits: float64). A tensor `lr` is read back (the HIC update decides on the
        host)."""
        done = len(self.pending)
        if not done:
            return 0
        lr = float(lr)
        grad = self.gradient()
        if not (math.isfinite(lr) and bool(torch.isfinite(grad).all())):
            # A NaN step would be written onto the devices for good: refuse it, untouched.
            self.pending.clear()
            raise RapaError(f"HIC arrays {tuple(self.shape)}: the weight gradient or the rate "
                            f"({lr:g}) is not finite; the devices are left as they were")
        if self._native(weight, grad):
            c, pcm = self.config, self.config.pcm
            torch.ops.rapa.hic_update(
                weight, self.accumulator, self.bits, self.g_binary, self.levels, self.g_pair,
                self.set_count, self.reset_count, self.saturations, grad, self.out_scale,
                float(lr), list(c.weights()), c.levels, c.accumulator_bits,
                c.accumulator_frac_bits, c.stochastic_rounding, c.set_probability,
                c.reset_probability, pcm.g_max, pcm.prog_noise_scale,
                [float(v) for v in pcm.prog_coeff], pcm.prog_coeff_g_max_reference,
                generator=generator)
        else:
            self._update(weight, grad, lr, generator)
        self.pending.clear()
        return done

    # rapa.hic_update (C++) where it applies: CPU tensors of one dtype, statistical programming.
    # Off: this module's tensor code, the reference it equals bit for bit (test_hic.py).
    native_update = True

    def _native(self, weight: Tensor, grad: Tensor) -> bool:
        tensors = [weight, grad, self.out_scale] + self.state_blobs()
        return (self.native_update and not self.pulsed and weight.is_contiguous()
                and all(t.device.type == "cpu" for t in tensors)
                and all(t.dtype == weight.dtype for t in tensors))

    def _update(self, weight: Tensor, grad: Tensor, lr: float, generator) -> None:
        """apply_update's work in tensor operations (every device and programming)."""
        c = self.config
        top, res = c.limits()
        dtype = torch.float64 if c.accumulator_bits > 24 else grad.dtype
        alpha = self.out_scale.to(dtype).view(-1, 1, 1)
        steps = grad.to(dtype) * (-lr * c.span / res) / alpha.square()  # in grid steps
        if c.stochastic_rounding:
            u = torch.rand(steps.shape, generator=generator, dtype=dtype, device=steps.device)
            steps = torch.floor(steps + u)
        else:
            steps = steps.round()
        acc = (self.accumulator.to(dtype) + steps * res).clamp(-top, top)
        whole = acc.trunc()
        self.accumulator.copy_(acc - whole)
        index = whole.view(-1).nonzero().squeeze(1)
        if len(index):
            wanted = self.value(index) + whole.view(-1)[index].to(self.levels.dtype)
            held = wanted.clamp(-c.span, c.span + c.capacity - 1)
            cut = (held != wanted).to(self.saturations.dtype)
            per_array = self.shape[1] * self.shape[2]
            self.saturations.index_add_(0, torch.div(index, per_array, rounding_mode="floor"),
                                        cut)
            self._hold(held, index, generator)
            weight.view(-1)[index] = self.read(index).to(weight.dtype)

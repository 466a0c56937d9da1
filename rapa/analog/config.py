"""Configuration of simulated analog (RPU) arrays, as typed dataclasses.

Field names and meanings follow IBM's aihwkit (ConstantStepDevice, IOParameters,
UpdateParameters), so that its users find the knobs where they expect them. Defaults are the
device and periphery of Gokmen & Vlasov (2016, "Acceleration of deep neural network training
with resistive cross-point devices", Table 1 and section "RPU array": 7-bit DAC, 9-bit ADC,
output noise 0.06, output bound 12, BL 31) as aihwkit and Gokmen et al. (2017, the CNN paper)
use them. Presets are subclasses with other defaults; a prototxt's rpu_param picks a preset
and overrides single fields (from_proto).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

NOISE_MANAGEMENT = ("none", "abs_max")
BOUND_MANAGEMENT = ("none", "iterative")
UPDATE_POLICIES = ("all", "single_random", "single_sequential")


def check_finite(config, rules, where: str, error: type = ValueError) -> None:
    """Raises `error` "<where>: <name> must be finite and <rule>, got <value>" for the first
    (name, ok, rule) of `rules` whose field `name` of `config` is not finite or not `ok`."""
    for name, ok, rule in rules:
        value = getattr(config, name)
        if not (math.isfinite(value) and ok):
            raise error(f"{where}: {name} must be finite and {rule}, got {value:g}")


@dataclass
class ConstantStepDevice:
    """A device that moves by a constant step per pulse coincidence, within saturating bounds.

    Each array draws, once, per cross-point ij (device-to-device variation; aihwkit 1.1.0's
    PulsedRPUDevice::populate, which its docstring describes only roughly):
      gain = 1 + dw_min_dtod xi,  r = up_down_dtod xi',
      up step   dw_min * (gain + r + min(up_down, 0)),
      down step dw_min * (gain - r - max(up_down, 0)),
      bounds    w_max * (1 + w_max_dtod xi2), w_min * (1 + w_min_dtod xi3).
    So up_down > 0 weakens the down steps (mean 1 - up_down) and up_down < 0 the up steps.
    With enforce_consistency (aihwkit's default) steps are taken by absolute value, bounds the
    wrong way round are swapped, and then w_max_ij = |w_max_ij|, w_min_ij = -|w_min_ij|: every
    device's range holds 0. Every coincidence then scales its step by (1 + dw_min_std xi)
    (cycle-to-cycle variation).
    """

    dw_min: float = 0.001
    """Mean weight change of one coincidence (Gokmen & Vlasov 2016: 0.001, about 1,200 states
    between the bounds)."""
    dw_min_dtod: float = 0.3
    """Device-to-device spread of dw_min, relative (Gokmen & Vlasov 2016: 30%)."""
    dw_min_std: float = 0.3
    """Cycle-to-cycle spread of each step, relative (Gokmen & Vlasov 2016: 30%)."""
    w_max: float = 0.6
    """Mean upper bound (Gokmen & Vlasov 2016: +0.6)."""
    w_min: float = -0.6
    """Mean lower bound (Gokmen & Vlasov 2016: -0.6)."""
    w_max_dtod: float = 0.3
    """Device-to-device spread of w_max, relative (Gokmen & Vlasov 2016: 30%)."""
    w_min_dtod: float = 0.3
    """Device-to-device spread of w_min, relative (Gokmen & Vlasov 2016: 30%)."""
    up_down: float = 0.0
    """Mean up/down imbalance beta of the steps, relative to dw_min (0: symmetric)."""
    up_down_dtod: float = 0.01
    """Device-to-device spread of the imbalance, relative to dw_min (aihwkit's default 0.01;
    Gokmen & Vlasov 2016 tolerate a few percent)."""
    enforce_consistency: bool = True
    """Steps >= 0 and w_min_ij <= 0 <= w_max_ij, as above (aihwkit's default). False: steps
    keep their sign, and a device whose bounds cross is stuck at their midpoint."""
    devices_per_weight: int = 1
    """Devices per cross-point, n (Gokmen, Onen, Haensch 2017: several devices per weight
    reduce the effect of device variability): each with its own device-to-device draws, the
    weight their mean (aihwkit's VectorUnitCell with its default gamma 1/n)."""
    update_policy: str = "all"
    """Which of the n devices an update pulses (aihwkit's VectorUnitCellUpdatePolicy): all
    (each device its own pulse trains: the weight's update is the mean of n), single_random
    (one device per backward pass, drawn), single_sequential (device k mod n at the k-th).
    With single_* the weight moves by 1/n of the update, as in aihwkit."""

    def check(self, where: str) -> None:
        if not self.dw_min > 0:
            raise ValueError(f"{where}: device.dw_min must be > 0, got {self.dw_min}")
        if not self.w_min <= 0 <= self.w_max:  # aihwkit refuses the rest too
            raise ValueError(f"{where}: device.w_min ({self.w_min}) must be <= 0 and w_max "
                             f"({self.w_max}) >= 0: a weight's range holds 0")
        if self.w_min == self.w_max:
            raise ValueError(f"{where}: device.w_min and w_max are both 0: no weight but 0 "
                             f"can be held")
        for name in ("dw_min_dtod", "dw_min_std", "w_max_dtod", "w_min_dtod", "up_down_dtod"):
            if not getattr(self, name) >= 0:  # nan too
                raise ValueError(f"{where}: device.{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.devices_per_weight <= 64:
            raise ValueError(f"{where}: device.devices_per_weight must be in [1, 64], got "
                             f"{self.devices_per_weight}")
        if self.update_policy not in UPDATE_POLICIES:
            raise ValueError(f"{where}: device.update_policy must be one of "
                             f"{', '.join(UPDATE_POLICIES)}, got '{self.update_policy}'")


@dataclass
class IOParameters:
    """The periphery of one direction of an array (forward W x or backward W^T d)."""

    is_perfect: bool = False
    """Exact products: no quantization, bounds, noise or management."""
    inp_res: float = 1 / (2 ** 7 - 2)
    """DAC resolution: the step as a fraction of the input range [-inp_bound, inp_bound]
    (a value > 1 is read as a number of steps). 7 bits (Gokmen & Vlasov 2016); <= 0: none."""
    inp_bound: float = 1.0
    """DAC range: inputs (after noise management) are clipped to [-inp_bound, inp_bound]."""
    out_res: float = 1 / (2 ** 9 - 2)
    """ADC resolution, as inp_res, over [-out_bound, out_bound]. 9 bits (paper section 3.2)."""
    out_bound: float = 12.0
    """ADC range: outputs saturate at +-out_bound (Gokmen & Vlasov 2016: 12, in units of
    a full input times one weight bound)."""
    out_noise: float = 0.06
    """Standard deviation of the Gaussian noise added to each output in the analog domain
    (Gokmen & Vlasov 2016: 0.06)."""
    noise_management: str = "abs_max"
    """abs_max: each input vector is divided by its absolute maximum before the DAC, and the
    output multiplied back (Gokmen et al. 2017, noise management); none: inputs as they are."""
    bound_management: str = "iterative"
    """iterative: while an output saturates, repeat with the input halved (Gokmen et al. 2017,
    bound management); none: saturated outputs stay clipped. aihwkit 1.1.0 has it in the
    forward pass only, so rapa's default backward periphery has none (RPUConfig.backward);
    setting it there is rapa's own option."""
    max_bm_factor: float = 1000.0
    """Bound management stops once its total reduction exceeds this factor (aihwkit: 1000)."""
    max_bm_res: float = 0.25
    """... or once the reduction times the input step exceeds this fraction (aihwkit: 0.25):
    a 7-bit input halved beyond 16 would keep fewer than 2 bits."""

    def check(self, where: str) -> None:
        for name in ("inp_res", "out_res", "out_noise", "max_bm_res"):
            if not math.isfinite(getattr(self, name)):  # NaN or inf: no converter, no noise
                raise ValueError(f"{where}: {name} must be a finite number, got "
                                 f"{getattr(self, name)}")
        if self.noise_management not in NOISE_MANAGEMENT:
            raise ValueError(f"{where}: noise_management must be one of "
                             f"{', '.join(NOISE_MANAGEMENT)}, got '{self.noise_management}'")
        if self.bound_management not in BOUND_MANAGEMENT:
            raise ValueError(f"{where}: bound_management must be one of "
                             f"{', '.join(BOUND_MANAGEMENT)}, got '{self.bound_management}'")
        for name in ("inp_bound", "out_bound"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{where}: {name} must be > 0, got {getattr(self, name)}")
        if not self.out_noise >= 0:
            raise ValueError(f"{where}: out_noise must be >= 0, got {self.out_noise}")
        # Finite and within float32's range: a reduction that overflows would repeat forever.
        if not 1 <= self.max_bm_factor <= 1e30:
            raise ValueError(f"{where}: max_bm_factor must be in [1, 1e30], got "
                             f"{self.max_bm_factor}")

    def op_args(self) -> dict:
        """The arguments of rapa.analog_mvm: steps and bounds in absolute units. Raises
        ValueError (check) for a periphery that is not one: every op call checks it, so a
        typo given through the Python API (noise_management="absmax") is not read as "none"."""
        if self.is_perfect:
            return dict(inp_step=0.0, inp_bound=math.inf, out_step=0.0, out_bound=math.inf,
                        out_noise=0.0, noise_management=False, bound_management=False,
                        max_bm_factor=1.0)
        self.check("IOParameters")
        inp_step = _step(self.inp_res, self.inp_bound)
        reduction = float(self.max_bm_factor)
        if inp_step > 0 and self.max_bm_res > 0:
            reduction = min(reduction, self.max_bm_res / inp_step)
        # The op takes the largest total reduction; a pass is repeated while the reduction so
        # far is within the limits above, so the last allowed one is twice that.
        return dict(inp_step=inp_step, inp_bound=float(self.inp_bound),
                    out_step=_step(self.out_res, self.out_bound), out_bound=float(self.out_bound),
                    out_noise=float(self.out_noise),
                    noise_management=self.noise_management == "abs_max",
                    bound_management=self.bound_management == "iterative",
                    max_bm_factor=max(1.0, 2 * reduction))


def _step(res: float, bound: float) -> float:
    if res <= 0 or math.isinf(bound):  # no converter steps over an unbounded range
        return 0.0
    return (1 / res if res > 1 else res) * 2 * bound


@dataclass
class UpdateParameters:
    """The pulsed update (Gokmen & Vlasov 2016; Gokmen et al. 2017, update management)."""

    desired_bl: int = 31
    """Length of the stochastic pulse trains, the largest when bit-length management is on
    (Gokmen & Vlasov 2016: BL 10; Gokmen et al. 2017 and aihwkit: 31). At most 64."""
    update_management: bool = True
    """Balance the pulse probabilities of x and d so that their largest entries fire alike;
    where BL pulses cannot reach lr |x|max |d|max (BL capped), the largest x fires every bit
    and d's probabilities clip (aihwkit 1.1.0's rule, checked by bench/update_stats.py)."""
    update_bl_management: bool = True
    """Shorten the trains to BL = ceil(lr |x|max |d|max / dw_min) where that is enough. Implies
    update management, as in aihwkit."""

    def check(self, where: str) -> None:
        if not 1 <= self.desired_bl <= 64:
            raise ValueError(f"{where}: update.desired_bl must be in [1, 64], got "
                             f"{self.desired_bl}")


@dataclass
class MappingParameters:
    """How a layer's weights map onto conductances (weight scaling: Rasch, Gokmen & Haensch
    2019, "Training large-scale ANNs on simulated resistive crossbar arrays"; aihwkit's
    MappingParameter).

    With weight_scaling_omega > 0, array t gets a digital scale
        alpha_t = max(max |W_t|, weight_range) / omega
    from the weights written to it (the fillers' at set-up, or a digital model's when loaded),
    its conductances are W_t / alpha_t, clipped to each device's bounds, its outputs are
    multiplied by alpha_t, and its pulsed update runs at the rate lr / alpha_t^2: the layer's
    weights (alpha_t times the conductances) compute and learn as the digital layer's would,
    and they can grow to about weight_range before the devices saturate."""

    weight_scaling_omega: float = 0.0
    """The conductance that the larger of an array's largest written weight and weight_range
    maps to (in the devices' units: 0.6 is the nominal bound). 0: weights are conductances as
    they are (aihwkit's default), clipped to the bounds."""
    weight_range: float = 0.0
    """The largest |weight| (in the layer's units) the arrays must hold after learning; it
    sets the scale when larger than the written weights. 0: the written weights alone set it,
    as aihwkit's weight scaling does, which leaves no room to grow: a Full net's conv1 filler
    (std 1e-4) would cap the layer's weights near 1e-3, where floating point reaches 0.2.
    Needs weight_scaling_omega > 0."""

    def check(self, where: str) -> None:
        for name in ("weight_scaling_omega", "weight_range"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{where}: mapping.{name} must be >= 0, got "
                                 f"{getattr(self, name)}")
        if self.weight_range > 1e6:  # no weight to learn; the scale would overflow float32
            raise ValueError(f"{where}: mapping.weight_range must be <= 1e6, got "
                             f"{self.weight_range}")
        if self.weight_range > 0 and not self.weight_scaling_omega > 0:
            raise ValueError(f"{where}: mapping.weight_range needs weight_scaling_omega > 0 "
                             f"(the conductance it maps to)")


@dataclass
class RPUConfig:
    """One array's device, periphery, update and weight mapping: aihwkit's SingleRPUConfig."""

    device: ConstantStepDevice = field(default_factory=ConstantStepDevice)
    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(
        default_factory=lambda: IOParameters(bound_management="none"))
    """The backward pass W^T d: aihwkit 1.1.0 runs it without bound management whatever its
    configuration says; here that is the default, and "iterative" is honoured if set."""
    update: UpdateParameters = field(default_factory=UpdateParameters)
    mapping: MappingParameters = field(default_factory=MappingParameters)

    def check(self, where: str = "rpu_param") -> None:
        # NaN passes no comparison unnoticed and inf makes no device: every number finite,
        # but the periphery's bounds, where inf means "none".
        unbounded = {"inp_bound", "out_bound"}
        for part in ("device", "forward", "backward", "update", "mapping"):
            for f in fields(getattr(self, part)):
                value = getattr(getattr(self, part), f.name)
                if isinstance(value, float) and (math.isnan(value) or (
                        math.isinf(value) and f.name not in unbounded)):
                    raise ValueError(f"{where}: {part}.{f.name} must be a finite number, got "
                                     f"{value}")
        self.device.check(where)
        omega = self.mapping.weight_scaling_omega
        # Beyond the nominal bound every mapped weight saturates; below a thousandth of it the
        # conductances sit under the 9-bit ADC's resolution (and the scale can overflow).
        if omega > 0 and not 1e-3 * self.device.w_max <= omega <= self.device.w_max:
            raise ValueError(f"{where}: mapping.weight_scaling_omega ({omega}) must lie within "
                             f"[0.001, 1] times the devices' w_max ({self.device.w_max})")
        self.forward.check(f"{where}: forward")
        self.backward.check(f"{where}: backward")
        self.update.check(where)
        self.mapping.check(where)


class GokmenVlasov2016(RPUConfig):
    """The device of Gokmen & Vlasov (2016): dw_min 0.001, bounds +-0.6, 30% device-to-device
    and cycle-to-cycle variation; 7-bit DAC, 9-bit ADC, output noise 0.06, out_bound 12, BL 31."""


@dataclass
class Rasch2019Device(ConstantStepDevice):
    """The paper's section 3.2: four times the states (dw_min 0.00025) and steps symmetric in
    every device (we read "ideally symmetric on average" as no up/down imbalance at all)."""

    dw_min: float = 0.00025
    up_down: float = 0.0
    up_down_dtod: float = 0.0


@dataclass
class Rasch2019(RPUConfig):
    """The RPU arrays of the paper's section 3.2 (Gokmen & Vlasov 2016 with Rasch2019Device),
    with the weight scaling of the "compensatory measures" it cites (Rasch et al. 2019): each
    array's largest initial weight maps to the nominal bound, omega = 0.6."""

    device: ConstantStepDevice = field(default_factory=Rasch2019Device)
    mapping: MappingParameters = field(
        default_factory=lambda: MappingParameters(weight_scaling_omega=0.6))


PARTS = ("device", "forward", "backward", "update", "mapping")
PRESETS = {"gokmen_vlasov_2016": GokmenVlasov2016, "rasch_2019": Rasch2019}


def from_proto(msg, where: str = "rpu_param") -> RPUConfig:
    """An RPUConfig from an RPUParameter message: its preset, then every field it sets."""
    if msg.preset not in PRESETS:
        raise ValueError(f"{where}: unknown preset '{msg.preset}'; known: "
                         f"{', '.join(sorted(PRESETS))}")
    config = PRESETS[msg.preset]()
    for part in PARTS:
        if not msg.HasField(part):
            continue
        sub, target = getattr(msg, part), getattr(config, part)
        for fd, value in sub.ListFields():
            if fd.type == fd.TYPE_FLOAT:  # the decimal written, not its float32 neighbour
                value = float(str(np.float32(value)))
            setattr(target, fd.name, type(getattr(target, fd.name))(value))
    config.check(where)
    return config


def describe(config: RPUConfig) -> str:
    """One line per part, for logs."""
    parts = []
    for part in PARTS:
        sub = getattr(config, part)
        fields = ", ".join(f"{f.name}={getattr(sub, f.name)!r}" for f in dataclasses.fields(sub))
        parts.append(f"{part}: {fields}")
    return "\n".join(parts)


def perfect(config: Optional[RPUConfig] = None) -> RPUConfig:
    """A copy of `config` (default: the base one) with exact forward and backward products."""
    config = dataclasses.replace(config or RPUConfig())
    config.forward = dataclasses.replace(config.forward, is_perfect=True)
    config.backward = dataclasses.replace(config.backward, is_perfect=True)
    return config

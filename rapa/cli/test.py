"""Test trained weights (Caffe's `caffe test`), with RAPA's majority vote.

Runs the TEST phase of --model for --iterations batches and prints each output averaged over
the batches; with --votes K every batch is also classified K times, each with its own random
tile assignment, and the majority vote's accuracy is printed (the paper used K = 9).

With --drift-time T1,T2,... the analog layers (rpu_param) are programmed into phase-change
memory (aihwkit's statistical PCM model: programming noise, drift, read noise), and HIC layers
(hic_param) keep the PCM devices their training programmed; the net is tested at each time
after programming, with global drift compensation unless --drift-compensation none;
--drift-repeats R programs R times (fresh programming noise and drift exponents; for HIC
layers fresh drift exponents) and reports mean and spread. --pcm changes the model's fields
(HIC layers keep their own g_max).
"""
import torch

from ..cuda_graph import RecordingFailed, graph_kept_off
from ..device import device_named
from ..errors import RapaError
from ..evaluate import reread, test_net
from ..net import Net
from ..proto import pb
from ..seeds import mix_seed
from ..snapshot import load_weights
from ..analog.drift import COMPENSATIONS, ProgrammedNet
from ..analog.pcm import parse_overrides
from .options import TIME_UNITS, count, seed, times, word


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--iterations", type=count(), default=50, help="test batches (default 50)")
    p.add_argument("--votes", type=count(), default=1, help="random assignments per image")
    p.add_argument("--device", type=word, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="seed of the test-time assignments")
    p.add_argument("--drift-time", type=times, help="test the analog layers programmed "
                   "into PCM at these times after programming, comma-separated: seconds, or "
                   "with a unit s, min, h, d, mo (30 d), y (365 d): 0,1h,1d,30d,1y")
    p.add_argument("--drift-compensation", choices=COMPENSATIONS,
                   help="global (the default): scale each array's outputs back by a read of "
                   "its mean |W|; none")
    p.add_argument("--drift-repeats", type=count(), default=1,
                   help="programmings (each with its own noise), averaged (default 1)")
    p.add_argument("--pcm", type=word, default="", help="PCM model fields, e.g. "
                   "'prog_noise_scale=0.5,drift_scale=0' (README: PCM drift)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, launch every kernel of every batch instead of replaying the "
                   "batch's passes recorded as a CUDA graph")


def run(args):
    device = device_named(args.device)
    torch.manual_seed(args.seed)
    net = Net.from_file(args.model, pb.TEST, seed=args.seed)
    if args.votes > 1 and not any(e.layer.votes for e in net.entries):
        net.close()
        raise RapaError(f"--votes {args.votes}: {args.model} has no layer that scores votes "
                        f"(an Accuracy layer in the TEST phase)")
    missing = load_weights(net, args.weights)
    if missing:
        raise RapaError(f"{args.weights}: has no weights for layer(s) {', '.join(missing)}")
    net.to_device(device)
    progress = False if args.no_progress else None
    again = reread(net, args.iterations)
    if again:
        print(f"note: --iterations {args.iterations}: {again}")
    try:
        if args.drift_time is None:
            if args.pcm or args.drift_repeats != 1 or args.drift_compensation:
                raise RapaError("--pcm, --drift-repeats and --drift-compensation go with "
                                "--drift-time")
            try:
                result = test_net(net, args.iterations, args.votes, progress=progress,
                                  graph=graphed(net, device, args.no_cuda_graph))
            except RecordingFailed as e:
                raise RapaError(f"CUDA graph: a test batch could not be recorded ({e}): run "
                                f"again with --no-cuda-graph") from None
        else:
            return _test_drift(net, args, device, progress)
    finally:
        net.close()
    print(f"{result.images} images, {args.iterations} batches")
    for k, v in result.outputs.items():
        extra = f" (error {100 * (1 - v):.2f}%)" if "acc" in k else ""
        print(f"{k} = {v:.4f}{extra}")
    for k, v in result.vote_accuracy.items():
        print(f"{k} (majority of {args.votes} votes) = {v:.4f} (error {100 * (1 - v):.2f}%)")
    return 0


def graphed(net, device: torch.device, no_cuda_graph: bool, say=print) -> bool:
    """Whether `rapa test` replays each batch's passes as a CUDA graph: on CUDA, unless
    --no-cuda-graph or the net holds arrays that keep it off (rapa.cuda_graph.graph_kept_off:
    HIC arrays), which `say` gets in one line."""
    if device.type != "cuda" or no_cuda_graph:
        return False
    off = graph_kept_off(net.learnable())
    if off:
        say(f"CUDA graph: off (layer(s) {', '.join(off)} hold HIC arrays): testing without one")
    return not off


def _seconds(t: float) -> str:
    for unit in ("y", "mo", "d", "h", "min"):
        if t >= TIME_UNITS[unit] and (t / TIME_UNITS[unit]).is_integer():
            return f"{t / TIME_UNITS[unit]:g} {unit}"
    return f"{t:g} s"


def _generator(device, *values: int) -> torch.Generator:
    """A generator of its own for each programming and each read: a row of the table does
    not depend on which other times are listed, nor in which order."""
    return torch.Generator(device).manual_seed(mix_seed(0, *values))


def _test_drift(net, args, device, progress) -> int:
    model = parse_overrides(args.pcm, "--pcm")
    compensation = args.drift_compensation or "global"
    rows: dict[float, list[dict[str, float]]] = {t: [] for t in args.drift_time}
    images = 0
    for repeat in range(args.drift_repeats):
        programmed = ProgrammedNet(net, model, args.model, _generator(device, args.seed, repeat))
        try:
            for t in args.drift_time:
                # The read's draws: from (seed, repeat, t in microseconds).
                programmed.read_at(t, compensation, _generator(device, args.seed, repeat,
                                                               1 + round(t * 1e6)))
                result = test_net(net, args.iterations, args.votes, progress=progress)
                images = result.images
                rows[t].append({**result.outputs, **{f"{k} (majority of {args.votes} votes)": v
                                                     for k, v in result.vote_accuracy.items()}})
        finally:
            programmed.restore()
    spread = " (mean +- standard deviation over them)" if args.drift_repeats > 1 else ""
    hic = any(b.arrays is not None and b.arrays.holds_pcm for b in net.learnable())
    kept = " (HIC layers: their trained devices, drift exponents drawn anew)" if hic else ""
    print(f"{images} images, {args.iterations} batches; PCM programmed {args.drift_repeats} "
          f"time(s){kept}{spread}, drift compensation {compensation}")
    for t, results in rows.items():
        parts = []
        for k in results[0]:
            values = torch.tensor([r[k] for r in results], dtype=torch.float64)
            spread = f" +- {values.std():.4f}" if len(values) > 1 else ""
            extra = f" (error {100 * (1 - values.mean()):.2f}%)" if "acc" in k else ""
            parts.append(f"{k} = {values.mean():.4f}{spread}{extra}")
        print(f"t = {_seconds(t)}: " + ", ".join(parts))
    return 0

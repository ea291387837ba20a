"""The argument parser of the command line: its commands, their options and the hints for
options given to the wrong command or mistyped."""

import argparse
import difflib
import re
from pathlib import Path

from .. import __version__
from .. import argtypes as at
from ..model import (
    DEFAULT_CONFIG,
    NETWORKS,
    UNET_DEFAULTS,
)
from ..pretrained import NAMES as PRETRAINED_NAMES
from ..unet import MAX_WIDTH
from .checks import _check_denoise, _check_eval, _check_export, _check_train
from .common import _rank
from .pairs import PHOTO_CROP, PHOTO_FACTORS, VAL_PHOTO_FACTOR
from .train import cmd_train
from .use import _tile_size, cmd_denoise, cmd_eval, cmd_export

# --threads' ceiling: torch crashes (a segmentation fault) asked for 100,000 threads, and the
# OpenMP runtime fails to start 20,000 on a 2-core machine
MAX_THREADS = 1024
MAX_EPOCHS = 10**6  # (a typo's 10**20 showed an ETA of 10**15 hours)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is None or a flag's False, where the help
    says what happens instead) and keeps the epilog's examples as written."""

    def _get_help_string(self, action):
        if (
            action.default is None
            or action.default is False
            or isinstance(action, argparse._VersionAction)
        ):
            return action.help
        return super()._get_help_string(action)


def _checkpoint_file(text: str) -> Path:
    """An existing checkpoint file, or an error that points a shipped network's name (given
    here in place of a file) to --model."""
    try:
        return at.existing_file("checkpoint")(text)
    except at.Error as e:
        if text in PRETRAINED_NAMES:
            raise at.Error(f"{e} (a shipped network goes by name to --model {text})") from None
        raise


def _sub(sub, name: str, usage: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A command whose usage is one short line (``--help`` lists every option)."""
    return sub.add_parser(
        name,
        usage=f"n2nfunc {name} {usage}",
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=_Help,
    )


def _common(p) -> None:
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="arithmetic of the network's matmuls: float32, or bfloat16 operands with "
        "float32 weights, accumulation and loss (needs a CPU with AMX or AVX512-BF16, or a "
        "recent GPU)",
    )
    p.add_argument(
        "--threads",
        type=at.int_range(1, MAX_THREADS),
        metavar="N",
        help="CPU threads for torch (default: torch's choice, usually one per core)",
    )
    p.add_argument(
        "--device",
        type=at.device,
        default="cpu",
        help="cpu, cuda, cuda:N, or auto (cuda when there is one)",
    )


def _data_path(check):
    """The argparse type of a data option: ``check`` where the data is read, a bare path on
    the other ranks of a data-parallel run, which receive it from rank 0 (so that the other
    machines of a multi-machine run need no copy of it)."""
    return check if _rank() == "0" else Path


def _nearest(text: str, names) -> list:
    """The names that ``text`` begins, else the closest one to it (a typo), else none."""
    return [n for n in names if n.startswith(text)] or difflib.get_close_matches(
        text, list(names), 1
    )


def _shipped_name(text: str) -> str:
    """A shipped network's name; a file is pointed to --checkpoint, a typo to the name."""
    if text in PRETRAINED_NAMES:
        return text
    names = ", ".join(repr(name) for name in PRETRAINED_NAMES)  # as argparse lists choices
    if "/" in text or "." in text:
        raise at.Error(
            f"{text!r} is not a shipped network ({names}); a file goes with --checkpoint"
        )
    close = _nearest(text, PRETRAINED_NAMES)  # ('unet': the three U-Nets)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise at.Error(f"invalid choice: {text!r} ({hint}choose from {names})")


def _val_options(p, training: bool = True) -> None:
    p.add_argument(
        "--val-pairs",
        type=_data_path(at.pair_dir),
        metavar="DIR",
        help="validate on DIR/a (noisy), DIR/b (clean)",
    )
    p.add_argument(
        "--val-photos",
        type=_data_path(at.image_dir),
        metavar="DIR",
        help="validate on noisy/clean patches cut from the photos in DIR (aliasing at factor "
        f"{VAL_PHOTO_FACTOR} unless --noise gives one)",
    )
    p.add_argument(
        "--n-val",
        type=at.int_range(1),
        default=1000,
        metavar="N",
        help="built-in / photo validation pairs",
    )
    p.add_argument(
        "--noise",
        type=at.noise,
        default="downsample",
        help="noise of the built-in or photo pairs: downsample (course-like aliasing) or "
        "downsample:FACTOR, gaussian:SIGMA or gaussian:LO-HI (0-255 scale, a range draws one "
        "sigma per image), poisson:PEAK or poisson:LO-HI",
    )
    p.add_argument(
        "--seed",
        type=at.int_range(0, 2**31 - 1),
        default=DEFAULT_CONFIG["seed"],
        help="seed of the data, initial weights and batch order"
        if training
        else "seed of the generated validation pairs",
    )


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)


class _Parser(argparse.ArgumentParser):
    commands: dict = {}  # name -> the command's parser, set by build_parser

    def __init__(self, *args, **kwargs):
        # no prefixes of options: "--epoch 2" is refused with a suggestion, not read as
        # --epochs (nor would a prefix keep its meaning once a longer option is added)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # "-1e-3" is a value, not an option: argparse's own pattern knows only -1 and -1.5,
        # and "--lr -1e-3" said "expected one argument" instead of naming the bad value
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        """argparse's error, with the nearest command for a mistyped one ('trian')."""
        prefix = "argument COMMAND: invalid choice: '"
        if message.startswith(prefix) and self.commands:
            typed = message[len(prefix) :].split("'", 1)[0]
            close = _nearest(typed, self.commands)  # ('export': export-submission)
            if close:
                message = message.replace(
                    " (choose from", f" (did you mean {close[0]}? choose from"
                )
        super().error(message)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="n2nfunc",
        description="Train and use a Noise2Noise image denoiser written with n2nfunc, a small\n"
        "deep-learning library with hand-written gradients.",
        epilog="examples:\n"
        "  n2nfunc train                       # built-in data; 4-9 min on a 2-core CPU\n"
        "  n2nfunc denoise noisy.png clean.png\n"
        "  n2nfunc train --help                # the options of one command",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"n2nfunc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name -> the command's parser

    t = _sub(
        sub,
        "train",
        "[options]   (n2nfunc train --help lists them)",
        "train the denoiser (on built-in data unless told otherwise)",
        "  n2nfunc train                                   # 50,000 built-in pairs, 12 epochs\n"
        "  n2nfunc train --epochs 2 --n-train 5000 --out runs/quick  # seconds: a smoke test\n"
        "  n2nfunc train --train train_data.pkl --val val_data.pkl\n"
        "  n2nfunc train --photos ~/Pictures --val-photos ~/Pictures/held-out\n"
        "  n2nfunc train --resume runs/latest/checkpoint.pth --out runs/latest\n",
    )
    data_options = t.add_argument_group("data (default: built-in pairs, generated once and cached)")
    data = data_options.add_mutually_exclusive_group()
    data.add_argument(
        "--train",
        type=_data_path(at.existing_file("pair file")),
        metavar="FILE",
        help="course training file (train_data.pkl); needs --val",
    )
    data.add_argument(
        "--pairs",
        type=_data_path(at.pair_dir),
        metavar="DIR",
        help="noisy/noisy images of equal names in DIR/a and DIR/b (cut into 32x32 patches)",
    )
    data.add_argument(
        "--photos",
        type=_data_path(at.image_dir),
        metavar="DIR",
        help="photos to cut noisy pairs from (at least one must be as large as a crop on its "
        f"short side: {PHOTO_CROP} px with Gaussian or Poisson noise, {32 * max(PHOTO_FACTORS)} "
        "with plain --noise downsample, 32 x FACTOR with downsample:FACTOR)",
    )
    data_options.add_argument(
        "--val",
        type=_data_path(at.existing_file("pair file")),
        metavar="FILE",
        help="course validation file (val_data.pkl)",
    )
    data_options.add_argument(
        "--n-train",
        type=at.int_range(1),
        default=None,
        metavar="N",
        help="built-in / photo training pairs (default 50000 32x32 patches; 12500 64x64 crops "
        "for --photos with Gaussian or Poisson noise)",
    )
    _val_options(data_options)
    net = t.add_argument_group("network and optimizer")
    net.add_argument(
        "--network",
        choices=NETWORKS,
        default="exercise",
        help="the exercise's required network, or the Noise2Noise U-Net (3x3 convolutions, "
        "max pooling, skip connections; --kernel and --upsampling do not apply)",
    )
    net.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights with a new optimizer: a model.pth, a run's "
        "checkpoint.pth, or a shipped network's name (exercise, unet-gaussian, unet-poisson, "
        "unet-aliasing); the run trains the network they record (to train a finished run "
        "further, or to fine-tune on your photos)",
    )
    net.add_argument(
        "--epochs",
        type=at.int_range(1, MAX_EPOCHS),
        default=DEFAULT_CONFIG["num_epochs"],
        metavar="N",
        help="passes over the training pairs",
    )
    net.add_argument(
        "--batch-size",
        type=at.int_range(1),
        default=DEFAULT_CONFIG["batch_size"],
        metavar="B",
        help="pairs per training step",
    )
    net.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default=DEFAULT_CONFIG["optimizer"],
        help="Adam, or SGD with momentum",
    )
    net.add_argument(
        "--lr",
        type=at.float_range(0.0),
        default=None,
        help=f"peak learning rate (warm-up, then cosine decay; default {DEFAULT_CONFIG['lr']:g}, "
        f"{UNET_DEFAULTS['lr']:g} for the U-Net)",
    )
    net.add_argument(
        "--momentum",
        type=at.float_range(0.0, 1.0, low_open=False),
        default=DEFAULT_CONFIG["momentum"],
        help="SGD momentum (with --optimizer sgd)",
    )
    net.add_argument(
        "--warmup-steps",
        type=at.int_range(0),
        default=DEFAULT_CONFIG["warmup_steps"],
        metavar="N",
        help="steps of linear learning-rate warm-up, at most a tenth of the run's steps",
    )
    net.add_argument(
        "--final-lr-fraction",
        type=at.float_range(0.0, 1.0, low_open=False, high_open=False),
        default=DEFAULT_CONFIG["final_lr_fraction"],
        metavar="F",
        help="where the cosine decay ends, as a fraction of the peak learning rate",
    )
    net.add_argument(
        "--finetune-lr-scale",
        type=at.float_range(0.0),
        default=DEFAULT_CONFIG["finetune_lr_scale"],
        metavar="S",
        help="with --init and no --lr: the peak learning rate is the default one times S",
    )
    net.add_argument(
        "--widths",
        type=at.int_range(1, MAX_WIDTH),
        nargs="+",
        default=None,
        metavar="W",
        help="channels: 2 for the exercise's network (after its first and second convolution, "
        "default 48 48), 4 for the U-Net (encoder, decoder, last two, default 32 64 48 24)",
    )
    net.add_argument(
        "--kernel",
        type=at.int_range(2, 5),
        default=DEFAULT_CONFIG["kernel"],
        metavar="K",
        help="kernel size of every layer",
    )
    net.add_argument(
        "--no-augment", action="store_true", help="no random flips / quarter turns of the batches"
    )
    net.add_argument(
        "--upsampling",
        choices=["transpose", "nearest"],
        default=DEFAULT_CONFIG["upsampling"],
        help="transposed convolution, or nearest x2 + convolution (needs an odd kernel)",
    )
    run = t.add_argument_group("output")
    run.add_argument(
        "--out",
        type=at.output_dir,
        default="runs/latest",
        metavar="DIR",
        help="folder for model.pth, checkpoint.pth, history.json and pictures (created, with "
        "its parents, if missing; files of an earlier run there are replaced; one run at a time "
        "writes into it); with --resume, the checkpoint's folder unless given",
    )
    run.add_argument(
        "--resume",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="continue a run from its checkpoint.pth (its settings and data options are used; "
        "options given here that disagree with them are refused)",
    )
    run.add_argument("--no-pictures", action="store_true", help="skip curves.png and samples.png")
    run.add_argument(
        "--nproc",
        type=at.int_range(1),
        default=1,
        metavar="N",
        help="data-parallel training in N local processes (torch.distributed, gloo on CPUs, "
        "NCCL on GPUs); the batch size stays the global one",
    )
    run.add_argument(
        "--quiet", action="store_true", help="no progress bar or in-epoch lines (epoch lines stay)"
    )
    _common(t)
    t.set_defaults(func=cmd_train, check=_check_train, parser=t)

    e = _sub(
        sub,
        "eval",
        "[options]   (n2nfunc eval --help lists them)",
        "PSNR of a checkpoint on validation data (default: the shipped weights)",
        "  n2nfunc eval                                    # shipped weights, built-in data\n"
        "  n2nfunc eval --checkpoint runs/latest/model.pth\n"
        "  n2nfunc eval --val val_data.pkl\n",
    )
    e_weights = e.add_mutually_exclusive_group()
    e_weights.add_argument(
        "--model",
        type=_shipped_name,
        metavar="{" + ",".join(PRETRAINED_NAMES) + "}",
        help="a shipped network, as for denoise (default: exercise)",
    )
    e_weights.add_argument(
        "--checkpoint",
        type=_checkpoint_file,
        metavar="FILE",
        help="weights to evaluate (default: the shipped n2nfunc/weights/bestmodel.pth)",
    )
    e.add_argument(
        "--val",
        type=at.existing_file("pair file"),
        metavar="FILE",
        help="course validation file (val_data.pkl)",
    )
    _val_options(e, training=False)
    _common(e)
    e.set_defaults(func=cmd_eval, check=_check_eval, parser=e)

    d = _sub(
        sub,
        "denoise",
        "INPUT OUTPUT [options]   (n2nfunc denoise --help lists them)",
        "denoise an image file of any size",
        "  n2nfunc denoise noisy.png denoised.png\n"
        "  n2nfunc denoise photo.jpg out.png --checkpoint runs/latest/model.pth\n"
        "  n2nfunc denoise photo.jpg out.png --model unet-gaussian\n",
    )
    d.add_argument(
        "input", type=at.input_image, metavar="INPUT", help="image to denoise (png, jpg, ...)"
    )
    d.add_argument(
        "output",
        type=at.output_image,
        metavar="OUTPUT",
        help="image to write (png, jpg, ...), in an existing folder; an existing file is "
        "replaced only with --overwrite",
    )
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it exists (without it, an existing file is refused: "
        "`n2nfunc denoise *.jpg` with two photos would write the first over the second)",
    )
    weights = d.add_mutually_exclusive_group()
    weights.add_argument(
        "--model",
        type=_shipped_name,
        metavar="{" + ",".join(PRETRAINED_NAMES) + "}",
        help="a shipped network: exercise (the default: the course's network, "
        "n2nfunc/weights/bestmodel.pth) or a U-Net for camera noise (unet-gaussian, "
        "unet-poisson) or the course's aliasing (unet-aliasing)",
    )
    weights.add_argument(
        "--checkpoint",
        type=_checkpoint_file,
        metavar="FILE",
        help="weights of your own (a model.pth written by `n2nfunc train`, or a U-Net's)",
    )
    d.add_argument(
        "--tile",
        type=_tile_size,
        metavar="PX",
        help="tile size in pixels, a multiple of 32; smaller tiles use less memory but take "
        "longer, as each computes its overlap again (a U-Net at --tile 192 takes several "
        "times as long as at its default 480). Tiles overlap by the "
        "network's reach, and an image that needs several takes tiles of at "
        "least twice the overlap plus 32 (default: 256, or six overlaps where larger). "
        "exercise: overlap 27, tiles >= 96; unet-gaussian and unet-poisson: overlap 78, "
        "tiles >= 192, default 480; unet-aliasing: overlap 38, tiles >= 128",
    )
    _common(d)
    d.set_defaults(func=cmd_denoise, check=_check_denoise, parser=d)

    x = _sub(
        sub,
        "export-submission",
        "OUT_DIR [--checkpoint FILE]",
        "write OUT_DIR/Miniproject_2/ for the course grader",
        "  n2nfunc export-submission out/\n"
        "  n2nfunc export-submission out/ --checkpoint runs/latest/model.pth\n",
    )
    x.add_argument(
        "out_dir",
        type=at.output_dir,
        metavar="OUT_DIR",
        help="folder to write Miniproject_2/ into (created if missing; a folder named "
        "Miniproject_2 is written into itself; in an existing Miniproject_2/ the exported files "
        "are replaced and others, such as Report_2.pdf, kept)",
    )
    x.add_argument(
        "--checkpoint",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="weights to ship (default: the shipped n2nfunc/weights/bestmodel.pth)",
    )
    x.set_defaults(func=cmd_export, check=_check_export, parser=x)
    return parser


def _refuse_unknown_options(parser: _Parser, argv: list) -> None:
    """Stop with the command's own usage at an option it does not have. argparse itself names
    an unknown option only after every positional was read, with the top-level usage, and an
    unknown option's value can first fail as a positional (``denoise --noise gaussian:25 in.png
    out.png`` said "no such image file: gaussian:25")."""
    commands = parser.commands
    at_command = next((i for i, t in enumerate(argv) if t in commands), None)
    first_word = next((i for i, t in enumerate(argv) if not t.startswith("-")), None)
    top = [s for action in parser._actions for s in action.option_strings]
    for token in argv[: first_word if at_command is None else at_command]:
        name = token.split("=", 1)[0]  # before the command only -h / --help / --version belong
        if token.startswith("-") and name not in top:
            parser.error(
                f"unrecognized option {token} before the command (n2nfunc --help lists "
                f"the commands: {', '.join(commands)})"
            )
    if at_command is None:  # (a mistyped command: argparse names it, _Parser.error the nearest)
        return
    command = commands[argv[at_command]]
    known = [s for action in command._actions for s in action.option_strings]
    for i, token in enumerate(argv[at_command + 1 :], at_command + 1):
        if token == "--":
            return
        if not token.startswith("-") or token == "-" or " " in token or _is_number(token):
            continue  # a value, as argparse reads it
        name = token.split("=", 1)[0]
        if name in known:
            continue  # (no prefixes: "--epoch" is not read as --epochs)
        prefixed = [k for k in known if k.startswith("--") and k.startswith(name)]
        words = [k[2:] for k in known if k.startswith("--")]  # the "--" would count as alike
        close = difflib.get_close_matches(name.lstrip("-"), words, 1, cutoff=0.7)  # widht
        close = (
            [p[2:] for p in prefixed] if name.startswith("--") and 0 < len(prefixed) <= 3 else close
        )
        alias = SAME_THING.get(argv[at_command], {}).get(name, "")
        value = token.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
        shipped = value in PRETRAINED_NAMES and value not in NETWORKS  # (not "exercise")
        if argv[at_command] == "train" and name == "--model" and shipped:
            alias = "--init"  # (train --model unet-gaussian: to start from the shipped weights)
        close = [alias[2:]] if alias in known else close
        hint = f"did you mean {' or '.join('--' + c for c in close)}? " if close else ""
        command.error(
            f"unrecognized option {name} ({hint}n2nfunc {argv[at_command]} --help lists the "
            "options)"
        )


# Options of one command that another command names otherwise: the hint for a user who
# gives the one to the other ("n2nfunc train --model unet").
SAME_THING = {
    "train": {"--model": "--network"},
    "eval": {"--network": "--model"},
    "denoise": {"--network": "--model"},
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

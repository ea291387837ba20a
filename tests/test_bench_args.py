"""The bench scripts refuse bad options in one usage line, before any work: a zero step or
epoch count once trained nothing and wrote the untrained weights over the shipped ones, and
``--epochs 0`` / ``--batch 0`` fell back to the defaults."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


GAUSSIAN = "train_unet.py --name unet-gaussian"


@pytest.mark.parametrize(
    "command, said",
    [
        (f"{GAUSSIAN} --steps 0", "--steps: expected an integer >= 1"),
        (f"{GAUSSIAN} --minutes -1", "--minutes: expected a finite number > 0"),
        (f"{GAUSSIAN} --steps 1 --arch foo", "--arch: expected DEPTH:ENC,DEC,A,B"),
        (f"{GAUSSIAN} --steps 1 --noise foo", "--noise: noise 'foo': unknown kind"),
        ("shipped_weights.py --epochs 0", "--epochs: expected an integer >= 1"),
        ("psnr.py --epochs 0", "--epochs: expected an integer >= 1"),
        ("op_times.py --batch 0", "--batch: expected an integer >= 1"),
        ("unet_train_step.py --arch 4:1,2", "--arch: expected DEPTH:ENC,DEC,A,B"),
        ("layers.py --threads 0", "--threads: expected an integer >= 1"),
    ],
)
def test_a_bad_option_is_one_usage_error(command, said):
    script, *args = command.split()
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]

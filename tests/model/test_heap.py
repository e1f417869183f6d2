"""The trainer's malloc setting: a large tensor freed and made again lands on pages already mapped (oracle: the
kernel's count of minor page faults, in a fresh process, with and without the setting)."""

import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys, torch
from model.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for step in range(8):  # a training step's pattern: 32 MiB made, written, freed
    if step == 4:  # malloc settles on two blocks it alternates between; then count
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(8 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_made_again_on_mapped_pages():
    pages = 4 * 8 * 2**20 * 4 // 4096  # four 32 MiB tensors, 4 KiB pages
    assert faults("default") > pages // 2  # malloc unmapped them: every page faults again
    assert faults("keep") < pages // 20

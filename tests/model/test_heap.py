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
for step in range(36):  # a training step's pattern: 32 MiB made, written, freed, 32 times after 4
    if step == 4:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(8 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_made_again_on_mapped_pages():
    pages = 32 * 8 * 2**20 * 4 // 4096  # 32 tensors of 32 MiB, 4 KiB pages
    assert faults("default") > pages // 2  # malloc unmapped them: every page faults again
    # Kept: the blocks are reused. Small allocations landing in a freed block can push the next large one to
    # fresh memory a few times while the heap settles (seen: up to 2 of the 32), never every time.
    assert faults("keep") < pages // 8

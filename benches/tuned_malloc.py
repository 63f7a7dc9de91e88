"""The glibc allocator setting afm applies to itself
(`afm_model::device::tune_allocator`: mallopt M_MMAP_THRESHOLD 1 GiB,
M_TRIM_THRESHOLD max), as glibc tunables, so the comparison scripts can give
the HF side the same setting (`--hf-tuned-malloc`)."""

import os
import sys

TUNED_MALLOC = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967295"

HELP = ("run HF with the glibc allocator setting afm applies to itself "
        "(GLIBC_TUNABLES mmap/trim thresholds; re-executes this script)")


def reexec_if_requested(requested):
    """Re-execute this script with the tunables set (glibc reads them at start-up)."""
    if requested and "GLIBC_TUNABLES" not in os.environ:
        env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def active():
    """True when this process runs with afm's allocator setting."""
    return os.environ.get("GLIBC_TUNABLES") == TUNED_MALLOC

"""`kernelalg.compute`: blockwise jobs, the store, resuming, and errors."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from _batching_cases import ATOL, CNN, FC, N1, B, inputs

import kernelalg as ka
from kernelalg import layers as kl
from kernelalg._batching import _store


ROOT = Path(__file__).resolve().parent.parent


def assert_kernels_close(result: ka.ComputeResult, want: ka.Kernel, atol=ATOL):
    got = result.value()
    assert isinstance(got, ka.Kernel)
    assert got.shape1 == want.shape1 and got.shape2 == want.shape2
    for name in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_fc_in_memory_and_stored(tmp_path, same):
    x1, x2 = inputs((5,))
    x2 = None if same else x2
    want = ka.kernel(FC, x1, x2)
    mem = ka.compute(FC, x1, x2, block_size=B, progress=False)
    assert_kernels_close(mem, want)
    # Symmetric: 6 of the 3 x 3 blocks; else 3 x 2 blocks.
    assert mem.blocks_total == 6 and mem.blocks_computed == mem.blocks_total
    stored = ka.compute(FC, x1, x2, block_size=B, store=tmp_path / "s", progress=False)
    assert isinstance(stored["nngp"], np.memmap) and not stored["nngp"].flags.writeable
    for name in mem.names:
        np.testing.assert_array_equal(stored[name], mem[name])
    again = ka.compute(FC, x1, x2, block_size=B, store=tmp_path / "s", progress=False)
    assert again.blocks_computed == 0
    np.testing.assert_array_equal(again["nngp"], mem["nngp"])


def test_pooled_cnn_sharded_blockwise_single(tmp_path):
    x1, _ = inputs((4, 4, 2))
    want = ka.kernel(CNN, x1)
    sharded = ka.compute(CNN, x1, block_size=B, progress=False)
    assert_kernels_close(sharded, want)
    blockwise = ka.compute(CNN, x1, block_size=B, devices=1, progress=False)
    assert_kernels_close(blockwise, want)


def test_empirical_kernel_fn(tmp_path):
    model = kl.Serial(kl.Dense(6), kl.Relu(), kl.Dense(2)).init(jax.random.key(1), (5,))
    kernel_fn = ka.empirical_kernel_fn(model, trace_axes=())
    x1, _ = inputs((5,))
    fn = eqx.Partial(kernel_fn, get=("nngp", "ntk"))
    got = ka.compute(fn, x1, block_size=B, store=tmp_path / "s", progress=False)
    want = kernel_fn(x1, None, ("nngp", "ntk"))
    assert got.blocks_total == 6  # the zipped (c, c) axes are known: symmetry used
    value = got.value()
    assert isinstance(value, ka.EmpiricalKernel)
    np.testing.assert_allclose(value.ntk, want.ntk, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["nngp"], want.nngp, rtol=0, atol=ATOL)


def test_oversized_block_is_clamped():
    x1, x2 = inputs((5,))
    got = ka.compute(FC, x1, x2, block_size=1000, progress=False)
    assert got.block_size == N1 and got.blocks_total == 1
    assert_kernels_close(got, ka.kernel(FC, x1, x2))


def test_progress_bar(capsys):
    x1, _ = inputs((5,))
    ka.compute(FC, x1, block_size=B, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "block" in err and "entries/s" in err


# ---------------------------------------------------------------------------------
# Store: resume, refusal of other jobs, failures


def test_resume_after_failure_recomputes_only_missing_blocks(tmp_path, monkeypatch):
    x1, _ = inputs((5,))
    reference = ka.compute(FC, x1, block_size=B, store=tmp_path / "ref", progress=False)
    writes = {"n": 0}
    real = _store.write_file

    def full_after_five(path, write):
        if path.suffix == ".npy":
            writes["n"] += 1
            if writes["n"] > 5:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(_store, "write_file", full_after_five)
    with pytest.raises(OSError, match=r"`store`: cannot write .* the disk is full.*rerun the same call"):
        ka.compute(FC, x1, block_size=B, store=tmp_path / "s", progress=False)
    monkeypatch.setattr(_store, "write_file", real)
    assert not list((tmp_path / "s" / "blocks").glob("*.tmp"))  # no half-written file
    store = tmp_path / "s"
    done = _finished_blocks(store)
    assert 0 < done < 6
    resumed = ka.compute(FC, x1, block_size=B, store=store, progress=False)
    assert resumed.blocks_computed == 6 - done
    for name in reference.names:
        np.testing.assert_array_equal(resumed[name], reference[name])


def _finished_blocks(store: Path) -> int:
    """Blocks whose every file is there (nngp, ntk and, on the diagonal, cov1)."""
    manifest = json.loads((store / "manifest.json").read_text())
    names = [a["name"] for a in manifest["arrays"] if a["role"] == "pair"]
    done = 0
    for f in (store / "blocks").glob(f"{names[0]}.*.npy"):
        i, j = f.name.split(".")[1:3]
        files = [store / "blocks" / f"{n}.{i}.{j}.npy" for n in names]
        if i == j:
            files.append(store / "blocks" / f"cov1.{i}.{j}.npy")
        done += all(p.is_file() for p in files)
    return done


def test_store_of_another_job_is_refused(tmp_path):
    x1, x2 = inputs((5,))
    store = tmp_path / "s"
    ka.compute(FC, x1, block_size=B, store=store, progress=False, compute_ntk=False)
    before = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    other_layer = kl.Serial(kl.Dense(16, W_std=1.4, b_std=0.1), kl.Relu(), kl.Dense(1, W_std=1.2, b_std=0.05))
    cases = [
        (dict(x1=x1 + 1.0), "`x1`"),
        (dict(x1=x1.astype(np.float32)), "`x1`"),
        (dict(x2=x2), "`x2`"),
        (dict(layer=other_layer), "the layer"),
        (dict(compute_ntk=True), "the kernel options"),
        (dict(block_size=2), "the block grid"),
    ]
    for change, match in cases:
        kw = dict(layer=FC, x1=x1, x2=None, block_size=B, compute_ntk=False) | change
        with pytest.raises(ValueError, match=f"`store=.*` holds a different job: it differs in .*{match}"):
            ka.compute(kw.pop("layer"), kw.pop("x1"), kw.pop("x2"), store=store, progress=False, **kw)
    after = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before  # refused before touching anything


def test_store_not_writable_fails_before_computing(tmp_path, monkeypatch):
    x1, _ = inputs((5,))

    def read_only(path, write):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_store, "write_file", read_only)
    calls = {"n": 0}
    real_run = ka._batching._api.run_blocks
    monkeypatch.setattr(
        ka._batching._api, "run_blocks", lambda *a, **k: calls.__setitem__("n", 1) or real_run(*a, **k)
    )
    with pytest.raises(PermissionError, match=r"`store`: cannot write .* permission denied"):
        ka.compute(FC, x1, block_size=B, store=tmp_path / "s", progress=False)
    assert calls["n"] == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    x1, _ = inputs((5,))
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="`store`"):
            ka.compute(FC, x1, block_size=B, store=store, progress=False)
    finally:
        store.chmod(0o755)


def test_store_paths_that_are_not_stores(tmp_path):
    x1, _ = inputs((5,))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        ka.compute(FC, x1, block_size=B, store=afile, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="non-empty directory without a kernelalg manifest"):
        ka.compute(FC, x1, block_size=B, store=busy, progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["thesis.tex"]


def test_store_killed_before_its_manifest_is_empty(tmp_path):
    # A kill between creating blocks/ and renaming the manifest into place.
    x1, _ = inputs((5,))
    store = tmp_path / "s"
    (store / "blocks").mkdir(parents=True)
    (store / ".manifest.json.123.abcdef12.tmp").write_text("{")
    got = ka.compute(FC, x1, block_size=B, store=store, progress=False)
    assert got.blocks_computed == 6


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(block_size=0), ValueError, "`block_size` must be an int >= 1"),
        (dict(), ValueError, "exactly one of `block_size`"),
        (dict(block_size=2, memory_budget=10**6), ValueError, "exactly one of `block_size`"),
        (dict(block_size=2, devices=0), ValueError, r"`devices=0`: at least one device is needed"),
        (dict(block_size=2, devices=[]), ValueError, r"`devices=\[\]`: at least one device"),
        (dict(block_size=2, devices=99), ValueError, r"`devices=99` but this process has 4 local devices"),
        (
            dict(block_size=2, memory_budget=None, diagonal_batch=False, x2=True),
            ValueError,
            "needs `x2=None`",
        ),
    ],
)
def test_bad_arguments(kwargs, err, match):
    x1, x2 = inputs((5,))
    if kwargs.pop("x2", False):
        kwargs["x2"] = x2
    with pytest.raises(err, match=match):
        ka.compute(FC, x1, progress=False, **kwargs)


def test_bad_function_arguments():
    x1, _ = inputs((5,))
    fn = ka.empirical_ntk_fn(FC.init(jax.random.key(0), (5,)))
    with pytest.raises(ValueError, match="`compute_ntk` apply to kernelalg layers"):
        ka.compute(fn, x1, block_size=2, compute_ntk=False, progress=False)
    with pytest.raises(ValueError, match="for a kernel function pass `block_size`"):
        ka.compute(fn, x1, memory_budget=10**6, progress=False)


# ---------------------------------------------------------------------------------
# Subprocesses: the command line, SIGKILL and resume, several processes


SPEC = """
from kernelalg import layers as kl

net = kl.Serial(kl.Dense(16, W_std=1.5, b_std=0.1), kl.Relu(), kl.Dense(1, W_std=1.2, b_std=0.05))
"""


def _cli(*args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "kernelalg", "compute", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


N_JOB = 16


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A network file, inputs on disk, and the in-process result with blocks of one
    example (the subprocess jobs below use the same blocks, hence the same programs)."""
    tmp = tmp_path_factory.mktemp("job")
    (tmp / "net.py").write_text(SPEC)
    x = np.asarray(jax.random.normal(jax.random.key(7), (N_JOB, 5)))
    np.save(tmp / "x.npy", x)
    return tmp, x, ka.compute(FC, x, block_size=1, progress=False)


def _job_args(tmp: Path, store: Path, *extra: str) -> list[str]:
    args = ["--spec", f"{tmp / 'net.py'}:net", "--inputs", str(tmp / "x.npy"), "--store", str(store)]
    return args + ["--block-size", "1", "--quiet", *extra]


def test_cli_sigkill_and_resume(job, tmp_path):
    tmp, x, reference = job
    store = tmp_path / "store"
    args = _job_args(tmp, store, "--cpu-devices", "1")
    proc = _cli(*args)
    total = N_JOB * (N_JOB + 1) // 2
    deadline = time.monotonic() + 120
    while not (store / "blocks").is_dir() or len(list((store / "blocks").glob("ntk.*.npy"))) < 10:
        assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = _finished_blocks(store)
    # At least 9: the 10th block may have lost its cov1 file to the kill.
    assert 9 <= done < total
    summary = _finish(_cli(*args))
    assert summary["blocks_total"] == total
    assert summary["blocks_computed"] == total - done  # finished blocks were not recomputed
    # Bit-identical to an uninterrupted run (in this process: the same block programs).
    for name in ("nngp", "ntk", "cov1"):
        np.testing.assert_array_equal(np.load(store / f"{name}.npy", allow_pickle=False), reference[name])
    np.testing.assert_allclose(reference["nngp"], ka.kernel(FC, x).nngp, rtol=0, atol=ATOL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh JAX processes: about 15 s on a 2-core machine
def test_two_processes_one_store(job, tmp_path):
    tmp, _, reference = job
    store = tmp_path / "store"
    args = _job_args(tmp, store, "--cpu-devices", "1", "--coordinator", f"127.0.0.1:{_free_port()}")
    procs = [_cli(*args, "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
    summaries = [_finish(p) for p in procs]
    total = N_JOB * (N_JOB + 1) // 2
    assert [s["blocks_total"] for s in summaries] == [total, total]
    # Each process computed its share (block k goes to process k mod 2).
    assert [s["blocks_computed"] for s in summaries] == [total // 2, total // 2]
    for name in ("nngp", "ntk", "cov1"):
        np.testing.assert_array_equal(np.load(store / f"{name}.npy"), reference[name])


@pytest.mark.slow
def test_eight_devices_in_a_subprocess(job, tmp_path):
    tmp, _, reference = job
    summary = _finish(_cli(*_job_args(tmp, tmp_path / "s", "--cpu-devices", "8")))
    assert summary["blocks_computed"] == N_JOB * (N_JOB + 1) // 2
    for name in ("nngp", "ntk", "cov1"):
        np.testing.assert_array_equal(np.load(tmp_path / "s" / f"{name}.npy"), reference[name])


def test_cli_errors(job, capsys):
    from kernelalg._cli import main

    tmp, _, _ = job
    args = ["compute", "--inputs", str(tmp / "x.npy"), "--store", str(tmp / "s"), "--block-size", "2"]
    with pytest.raises(SystemExit, match="defines no 'nope'"):
        main(args + ["--spec", f"{tmp / 'net.py'}:nope"])
    with pytest.raises(SystemExit, match="--spec must be FILE.py:NAME"):
        main(args + ["--spec", "net.py"])
    with pytest.raises(SystemExit, match="go together"):
        main(args + ["--spec", f"{tmp / 'net.py'}:net", "--coordinator", "127.0.0.1:1"])
    assert not (tmp / "s").exists()


def test_parse_bytes():
    from kernelalg._cli import parse_bytes

    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("1000") == 1000
    with pytest.raises(Exception, match="not a size"):
        parse_bytes("lots")

"""Fuzzing the loaders of untrusted files: checkpoints (``load_checkpoint`` + ``inspect --verify``) and
resume states (``load_state``).

A seeded mutator derives files from a valid checkpoint — bit flips, overwritten, inserted and deleted
bytes, truncations, appended bytes, forged header lengths, structural edits of the JSON header (dtypes,
shapes, offsets, tensors added/removed/renamed), edits of the metadata JSON (configs, data description,
lineage: wrong types, huge numbers, 5,000-digit integers, 100,000-deep nesting), random garbage, and
headers spliced onto other files' data. Every mutant must end one of two ways:

* refused with :class:`BadInputError` — a one-line message, exit 2 in the CLI; or
* accepted only if it is the *same* file in meaning (e.g. a space in the header padding became a tab),
  in which case ``inspect --verify`` passes because nothing changed.

A mutant that loads although it differs (say, flipped weight bytes) must be flagged by ``--verify``
(weights hash, metadata integrity record, lineage chain): that also exits 2. Anything else — another
exception, a traceback, more than 5 s on one file — fails the test. A sample goes through the real CLI,
in process and in a subprocess.
"""

from __future__ import annotations

import json
import random
import signal
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from reliability_common import build_file, error_lines, run_cli_process, split_file, untrained_checkpoint
from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
from unlearnctl.errors import BadInputError
from unlearnctl.provenance import summary, verify_checkpoint

SEED = 7
NUM_CHECKPOINT_MUTANTS = 1100
NUM_STATE_MUTANTS = 150
PER_FILE_LIMIT_S = 5.0


# --------------------------------------------------------------------------------------------- the mutator


def random_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 10**12, 2**64, 1e308, float("inf"), "x", "", [], {}, [1, 2], {"a": 1},
                       "9" * 30, -(2**63), 0.5])


def mutate_json(value, rng: random.Random, depth: int = 0):
    """Replace, delete or add one node somewhere in a JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        action = rng.random()
        if action < 0.2:
            return {k: v for k, v in value.items() if k != key}
        if action < 0.3:
            return {**value, key + rng.choice(["_", "x", ""]) + "!": value[key]}
        return {**value, key: mutate_json(value[key], rng, depth + 1)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        action = rng.random()
        if action < 0.15:
            return value[:i] + value[i + 1:]
        if action < 0.25:
            return value + [random_value(rng)]
        return value[:i] + [mutate_json(value[i], rng, depth + 1)] + value[i + 1:]
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, -value - 1, 10**9, value * 1000])
    return random_value(rng)


def mutants(original: bytes, rng: random.Random, count: int, splice_data: bytes):
    """``count`` (kind, bytes) pairs derived from ``original``."""
    header, data = split_file(original)
    header_end = len(original) - len(data)
    meta_keys = sorted(header.get("__metadata__", {}))

    def flip_header_bits():
        raw = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(8, header_end)] ^= 1 << rng.randrange(8)
        return bytes(raw)

    def flip_any_bits():
        raw = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)

    def overwrite_bytes():
        raw = bytearray(original)
        at = rng.randrange(0, header_end)
        for i in range(rng.randint(1, 16)):
            if at + i < len(raw):
                raw[at + i] = rng.randrange(256)
        return bytes(raw)

    def insert_bytes():
        at = rng.randrange(0, header_end)
        return original[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + original[at:]

    def delete_bytes():
        at = rng.randrange(0, header_end)
        return original[:at] + original[at + rng.randint(1, 256):]

    def truncate():
        return original[:rng.randrange(len(original))]

    def append_bytes():
        return original + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))

    def forge_length():
        (size,) = struct.unpack("<Q", original[:8])
        value = rng.choice([0, 1, 7, 8, size - 8, size - 1, size + 1, size + 8, len(original), len(original) - 8,
                            2**63, 2**64 - 1, rng.randrange(2**64)])
        return struct.pack("<Q", max(0, value) % 2**64) + original[8:]

    def edit_tensor_entry():
        tensors = [k for k in header if k != "__metadata__"]
        name = rng.choice(tensors)
        edited = json.loads(json.dumps(header))
        action = rng.random()
        if action < 0.1:
            del edited[name]
        elif action < 0.2:
            edited[name + ".x"] = edited.pop(name)
        elif action < 0.3:
            edited["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        else:
            edited[name] = mutate_json(edited[name], rng)
        return build_file(edited, data)

    def edit_metadata_json():
        edited = json.loads(json.dumps(header))
        key = rng.choice(meta_keys)
        meta = edited["__metadata__"]
        action = rng.random()
        if action < 0.1:
            del meta[key]
        elif action < 0.2:
            meta[key] = rng.choice(["", "{", "null", "[]", "1", '"x"', "NaN"])
        elif action < 0.25:
            meta[key] = "[" * 100_000 + "]" * 100_000  # RecursionError in a naive parser
        elif action < 0.3:
            meta[key] = '{"sample_size": ' + "9" * 5000 + "}"  # beyond Python's int-parsing digit limit
        else:
            try:
                value = json.loads(meta[key])
            except ValueError:
                value = meta[key]
            meta[key] = json.dumps(mutate_json(value, rng)) if not isinstance(value, str) else rng.choice(
                ["2", "0", "unlearnctl-state", "unlearnctl ", value + "x"])
        return build_file(edited, data)

    def metadata_not_strings():
        edited = json.loads(json.dumps(header))
        key = rng.choice(meta_keys)
        edited["__metadata__"][key] = random_value(rng)
        return build_file(edited, data)

    def deep_header():
        return build_file({"a": 0}, b"")[:8] + b"[" * 60_000 + b"]" * 60_000

    def garbage():
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2048)))

    def splice():
        return build_file(header, splice_data)

    operators = [flip_header_bits, flip_any_bits, overwrite_bytes, insert_bytes, delete_bytes, truncate,
                 append_bytes, forge_length, edit_tensor_entry, edit_tensor_entry, edit_metadata_json,
                 edit_metadata_json, edit_metadata_json, metadata_not_strings, garbage, splice]
    for i in range(count):
        operator = deep_header if i % 200 == 199 else rng.choice(operators)
        mutant = operator()
        if operator is deep_header:  # fix the length field to the real header size
            mutant = struct.pack("<Q", len(mutant) - 8) + mutant[8:]
        yield operator.__name__, mutant


# --------------------------------------------------------------------------------------------- the oracle


def meaning(raw: bytes):
    """What a file means: the parsed header with metadata JSON parsed, and the data bytes."""
    header, data = split_file(raw)
    meta = {k: (json.loads(v) if k not in ("format", "format_version", "integrity", "command", "step") else v)
            for k, v in header.pop("__metadata__").items()}
    return header, meta, data


def same_meaning(mutant: bytes, original: bytes) -> bool:
    try:
        return meaning(mutant) == meaning(original)
    except Exception:
        return False


class Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def fire(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def inspect_verify(path: Path) -> str:
    """What ``inspect --verify`` does, in process: ``refused``, ``flagged`` (exit 2 both) or ``accepted``."""
    try:
        checkpoint = load_checkpoint(path)
    except BadInputError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(exc)
        return "refused"
    summary(checkpoint)
    return "flagged" if verify_checkpoint(checkpoint, search_dir=path.parent) else "accepted"


def fuzz(original: bytes, check, count: int, tmp: Path, splice_data: bytes, seed: int) -> dict:
    rng = random.Random(seed)
    stats = {"refused": 0, "flagged": 0, "accepted": 0, "same": 0, "max_s": 0.0, "kinds": {}}
    failures = []
    path = tmp / "mutant.safetensors"
    started = time.perf_counter()
    for kind, mutant in mutants(original, rng, count, splice_data):
        stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
        path.write_bytes(mutant)
        t0 = time.perf_counter()
        try:
            with time_limit(PER_FILE_LIMIT_S):
                outcome = check(path)
        except Timeout:
            failures.append(f"{kind}: no answer within {PER_FILE_LIMIT_S} s")
            continue
        except Exception as exc:  # anything but a clean refusal is a bug
            failures.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        stats["max_s"] = max(stats["max_s"], time.perf_counter() - t0)
        same = same_meaning(mutant, original)
        stats["same"] += same
        if outcome == "accepted" and not same:
            failures.append(f"{kind}: a changed file was accepted")
        stats[outcome] += 1
    stats["total_s"] = time.perf_counter() - started
    return {"stats": stats, "failures": failures}


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def files(shapes_split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-originals")
    conditional = untrained_checkpoint(shapes_split, conditional=True)
    save_checkpoint(conditional, folder / "conditional.safetensors")
    child = conditional.derive({k: v + 0.01 for k, v in conditional.state_dict.items()}, {"command": "unlearn", "method": "x"})
    save_checkpoint(child, folder / "child.safetensors")
    unconditional = untrained_checkpoint(shapes_split, conditional=False)
    save_checkpoint(unconditional, folder / "unconditional.safetensors")
    return {name: (folder / f"{name}.safetensors").read_bytes() for name in ("conditional", "child", "unconditional")}


def test_fuzzed_checkpoints_are_refused_or_flagged_never_crash(files, tmp_path, capsys):
    original = files["child"]  # two lineage entries: the chain checks are exercised too
    assert inspect_verify_bytes(original, tmp_path) == "accepted"
    result = fuzz(original, inspect_verify, NUM_CHECKPOINT_MUTANTS, tmp_path, split_file(files["unconditional"])[1], SEED)
    stats = result["stats"]
    with capsys.disabled():
        print(f"\ncheckpoint fuzz: {NUM_CHECKPOINT_MUTANTS} mutants in {stats['total_s']:.1f} s (slowest {stats['max_s'] * 1000:.0f} ms): "
              f"{stats['refused']} refused on load, {stats['flagged']} flagged by --verify, {stats['accepted']} accepted "
              f"(only same-meaning mutants may be: {stats['same']} in all); kinds {stats['kinds']}")
    assert not result["failures"], result["failures"][:10]
    assert stats["refused"] + stats["flagged"] + stats["accepted"] == NUM_CHECKPOINT_MUTANTS
    assert stats["accepted"] <= stats["same"]
    assert stats["refused"] > NUM_CHECKPOINT_MUTANTS // 2 and stats["flagged"] > 20  # both defences are exercised


def inspect_verify_bytes(raw: bytes, tmp: Path) -> str:
    path = tmp / "original.safetensors"
    path.write_bytes(raw)
    try:
        return inspect_verify(path)
    finally:
        path.unlink()


def test_fuzzed_resume_states_are_refused_never_crash(shapes_split, tmp_path, capsys):
    import torch

    from unlearnctl.resume import load_state, save_state

    checkpoint = untrained_checkpoint(shapes_split)
    unet = checkpoint.build_unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    unet(torch.zeros(1, 1, 8, 8), torch.tensor([1]), class_labels=torch.tensor([0])).sample.sum().backward()
    optimizer.step()
    state = {"model": unet.state_dict(), "optimizer": optimizer.state_dict(), "generator": torch.Generator().manual_seed(0).get_state()}
    save_state(tmp_path / "run.state.safetensors", "train", {"steps": 10}, 3, state)
    original = (tmp_path / "run.state.safetensors").read_bytes()

    def check(path: Path) -> str:
        try:
            load_state(path)
        except BadInputError as exc:
            assert "\n" not in str(exc)
            return "refused"
        return "accepted"

    result = fuzz(original, check, NUM_STATE_MUTANTS, tmp_path, b"", SEED + 1)
    stats = result["stats"]
    with capsys.disabled():
        print(f"\nstate fuzz: {NUM_STATE_MUTANTS} mutants in {stats['total_s']:.1f} s: {stats['refused']} refused, "
              f"{stats['accepted']} accepted (only same-meaning mutants may be: {stats['same']} in all)")
    assert not result["failures"], result["failures"][:10]
    assert stats["accepted"] <= stats["same"]


def test_fuzzed_files_through_the_cli_exit_2_with_one_line(files, tmp_path, cli):
    rng = random.Random(SEED + 2)
    splice_data = split_file(files["unconditional"])[1]
    codes = []
    for i, (kind, mutant) in enumerate(mutants(files["conditional"], rng, 60, splice_data)):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(mutant)
        result = cli("inspect", path, "--verify")
        if same_meaning(mutant, files["conditional"]):
            continue
        codes.append(result.code)
        assert result.code == 2, (kind, result)
        assert len(error_lines(result.err)) == 1 and "Traceback" not in result.err, (kind, result.err)
    assert len(codes) >= 50


@pytest.mark.slow  # a fresh process imports torch: ~3 s idle, ~25 s on a loaded machine
def test_fuzzed_files_in_a_fresh_process_exit_2_with_one_line(files, tmp_path):
    rng = random.Random(SEED + 3)
    paths = []
    for kind, mutant in mutants(files["conditional"], rng, 40, b""):
        if kind in ("edit_metadata_json", "edit_tensor_entry", "forge_length") and not same_meaning(mutant, files["conditional"]):
            paths.append(tmp_path / f"{kind}-{len(paths)}.safetensors")
            paths[-1].write_bytes(mutant)
        if len(paths) == 1:  # a fresh process costs seconds (torch import); one shows the real exit path
            break
    for path in paths:
        started = time.perf_counter()
        result = run_cli_process("inspect", path, "--verify", timeout=120)
        assert result.returncode == 2, (path.name, result.stderr)
        assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr, result.stderr
        assert time.perf_counter() - started < 120

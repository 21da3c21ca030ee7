"""The offline audio and video smoke tasks (tasks/tamp_smoke_av): data, lmms-eval hooks, and a full evaluation.

The media are checked by *decoding* them (soundfile / librosa for WAV, decord as the wrappers do for MP4) and
reading the answer back out of the signal, so a question can only be answered from its media. An oracle
model that does the same inside lmms-eval's simple_evaluate scores 1.0 on every task: dataset loading,
request building, doc_to_* hand-over, scoring and aggregation all work end to end without a real model.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "tasks" / "tamp_smoke_av"
AV_TASKS = ("tamp_smoke_audio", "tamp_smoke_video", "tamp_smoke_video_mc")


def _load(name: str) -> Any:
    """Import a module of the task folder under a private name (lmms-eval imports its utils.py by path too)."""
    spec = importlib.util.spec_from_file_location(f"tamp_smoke_av_{name}", TASK_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load("generate")
utils = _load("utils")


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TASK_DIR / "data" / name).read_text().splitlines()]


# --- reading the answer back out of the media ---------------------------------------------------------
def describe_audio(array: np.ndarray, rate: int) -> dict[str, Any]:
    """What a listener would say about a clip: silence / noise / tone, pitch, and the number of beeps."""
    x = np.asarray(array, dtype=np.float64)
    if np.sqrt(np.mean(x ** 2)) < 1e-3:
        return {"kind": "silence"}
    spectrum = np.abs(np.fft.rfft(x))
    if spectrum.max() / spectrum.mean() < 20:  # flat spectrum
        return {"kind": "noise"}
    peak_hz = np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]
    win = int(0.005 * rate)
    envelope = np.convolve(np.abs(x), np.ones(win) / win, mode="same") > 0.1
    count = int(envelope[0]) + int(np.sum(envelope[1:] & ~envelope[:-1]))
    continuous = envelope.mean() > 0.9
    return {"kind": "tone" if continuous else "beeps", "pitch": "high" if peak_hz > 600 else "low",
            "peak_hz": float(peak_hz), "count": count}


def describe_video(frames: np.ndarray) -> dict[str, str]:
    """Colour of what is not white, and where the non-white part goes from the first frame to the last."""
    f = frames.astype(np.int32)
    mask = np.abs(f - 255).sum(axis=-1) > 90  # (T, H, W): not white
    mean = f[mask].reshape(-1, 3).mean(axis=0)
    colour = min(gen.RGB, key=lambda c: float(np.sum((np.array(gen.RGB[c]) - mean) ** 2)))
    if mask.mean() > 0.9:
        return {"colour": colour, "motion": "none"}
    (y0, x0), (y1, x1) = (np.argwhere(mask[i]).mean(axis=0) for i in (0, -1))
    dx, dy = x1 - x0, y1 - y0
    motion = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    return {"colour": colour, "motion": motion}


def read_video(path: str) -> tuple[np.ndarray, float]:
    """All frames through decord, as lmms-eval's llava_hf / llava_onevision / qwen2_vl wrappers read videos."""
    decord = pytest.importorskip("decord")
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    return vr.get_batch(list(range(len(vr)))).asnumpy(), float(vr.get_avg_fps())


def answer_from_media(question: str, visuals: list[Any]) -> str:
    """The one-word answer to one of the tasks' questions, taken from the media alone."""
    if isinstance(visuals[0], dict):
        clip = describe_audio(visuals[0]["array"], visuals[0]["sampling_rate"])
        if "silence" in question:
            return clip["kind"]
        if "high or low" in question:
            return clip["pitch"]
        return gen.COUNT_WORDS[clip["count"]]
    video = describe_video(read_video(visuals[0])[0])
    return video["motion"] if "direction" in question else video["colour"]


# --- data -----------------------------------------------------------------------------------------------
def test_generator_reproduces_committed_data(tmp_path: Path) -> None:
    """Byte for byte: WAV and JSONL always; MP4 with the PyAV release that wrote them (FFmpeg's encoder may
    change between releases; then the frames are still checked by the decoding tests below)."""
    av = pytest.importorskip("av")
    written = gen.write(tmp_path / "data")
    committed = sorted(p.relative_to(TASK_DIR / "data") for p in (TASK_DIR / "data").rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path / "data") for p in written) == committed
    again = gen.write(tmp_path / "again")
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(written, again)), "generator is not deterministic"
    differ = [rel for rel in committed
              if (tmp_path / "data" / rel).read_bytes() != (TASK_DIR / "data" / rel).read_bytes()]
    assert not [str(rel) for rel in differ if rel.suffix != ".mp4"], f"regenerate (generate.py): {differ} changed"
    if differ and av.__version__ != gen.BUILT_WITH_AV:
        pytest.skip(f"MP4s written with PyAV {gen.BUILT_WITH_AV}, this is {av.__version__}: bytes differ")
    assert not differ, f"regenerate with `python tasks/tamp_smoke_av/generate.py`: {[str(r) for r in differ]} changed"


def test_committed_data_is_small_and_rows_are_sound() -> None:
    total = sum(p.stat().st_size for p in (TASK_DIR / "data").rglob("*") if p.is_file())
    assert total < 150_000
    for name, key in (("audio.jsonl", "audio"), ("video.jsonl", "video"), ("video_mc.jsonl", "video")):
        rows = _rows(name)
        assert 6 <= len(rows) <= 10 and len({r["id"] for r in rows}) == len(rows)
        assert all(utils.media_path(r[key]).is_file() and re.fullmatch(r"[a-z]+|[A-D]", r["answer"]) for r in rows)
        assert len({r["answer"] for r in rows}) > 2  # no constant answer scores well
    mc = _rows("video_mc.jsonl")
    assert all(r["options"][ord(r["answer"]) - ord("A")] == r["answer_text"] for r in mc)


def test_audio_decodes_to_what_the_rows_say() -> None:
    sf = pytest.importorskip("soundfile")
    librosa = pytest.importorskip("librosa")
    for row in _rows("audio.jsonl"):
        path = utils.media_path(row["audio"])
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        data, rate = sf.read(path, dtype="float32")
        ours, our_rate = utils.read_wav(path)
        np.testing.assert_array_equal(data, ours)
        lib, lib_rate = librosa.load(path, sr=None, mono=True)
        np.testing.assert_allclose(lib, ours, atol=1e-6)
        assert rate == our_rate == lib_rate == 16000 and len(ours) == int(gen.CLIP_S * 16000)
        clip = gen.CLIPS[row["clip"]]
        heard = describe_audio(ours, rate)
        assert heard["kind"] == clip["kind"]
        if clip["kind"] in ("tone", "beeps"):
            assert heard["pitch"] == clip["pitch"]
            assert heard["peak_hz"] == pytest.approx(gen.PITCH_HZ[clip["pitch"]], abs=2 * rate / len(ours))
        if clip["kind"] == "beeps":
            assert heard["count"] == clip["count"]
        assert answer_from_media(row["question"], utils.doc_to_audio(row)) == row["answer"]


def test_video_decodes_to_what_the_rows_say() -> None:
    for row in _rows("video.jsonl") + _rows("video_mc.jsonl"):
        frames, fps = read_video(utils.doc_to_visual(row)[0])
        assert frames.shape == (gen.FRAMES, gen.SIZE, gen.SIZE, 3) and frames.dtype == np.uint8 and fps == gen.FPS
        assert np.abs(frames.astype(int) - gen.video_frames(gen.VIDEOS[row["clip"]]).astype(int)).mean() < 3
        assert describe_video(frames) == gen.VIDEOS[row["clip"]]
        want = row.get("answer_text", row["answer"])
        assert answer_from_media(row["question"], utils.doc_to_visual(row)) == want


def test_lmms_eval_pyav_loader_reads_the_videos() -> None:
    """lmms-eval's read_video (PyAV; llava_onevision's pyav backend, qwen2_5_omni) gets the same 8 frames."""
    pytest.importorskip("av")
    from lmms_eval.models.model_utils.load_video import read_video as lmms_read_video

    for row in _rows("video_mc.jsonl"):
        frames = lmms_read_video(utils.doc_to_visual(row)[0], num_frm=32)
        assert frames.shape == (gen.FRAMES, gen.SIZE, gen.SIZE, 3)
        assert describe_video(frames) == gen.VIDEOS[row["clip"]]


# --- lmms-eval hooks ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tm() -> Any:
    from harness.tasks_catalog import task_manager

    return task_manager()


@pytest.fixture(scope="module")
def tasks(tm: Any) -> dict[str, Any]:
    from lmms_eval.tasks import get_task_dict

    return get_task_dict(list(AV_TASKS), tm)


def test_task_manager_finds_the_tasks(tm: Any) -> None:
    from harness.tasks_catalog import dataset_paths, output_type

    assert set(AV_TASKS) <= set(tm.all_tasks)
    assert set(tm.task_index["tamp_smoke_av"]["task"]) == set(AV_TASKS)
    for task in AV_TASKS:
        assert dataset_paths(task, tm) == {task: "json"} and output_type(task, tm) == "generate_until"


def test_audio_task_hooks(tasks: dict[str, Any]) -> None:
    task = tasks["tamp_smoke_audio"]
    docs = task.test_docs()
    assert len(docs) == len(_rows("audio.jsonl"))
    for doc in docs:
        (audio,) = task.doc_to_visual(doc)
        assert set(audio) == {"array", "sampling_rate", "path", "type"} and audio["type"] == "audio"
        assert audio["array"].dtype == np.float32 and audio["array"].ndim == 1 and audio["sampling_rate"] == 16000
        assert np.abs(audio["array"]).max() <= 1.0 and Path(audio["path"]).is_absolute()
        assert task.doc_to_text(doc) == doc["question"] + "\nAnswer the question using a single word only."
        assert task.doc_to_target(doc) == doc["answer"]
        assert task.process_results(doc, [doc["answer"]]) == {"exact_match": 1.0}
        assert task.process_results(doc, [f" {doc['answer'].title()}.\nbecause"]) == {"exact_match": 1.0}
        assert task.process_results(doc, ["maybe"]) == {"exact_match": 0.0}
        assert task.process_results(doc, [""]) == {"exact_match": 0.0}
    count = next(d for d in docs if d["answer"] == "three")
    assert task.process_results(count, ["3"]) == {"exact_match": 1.0}


def test_video_task_hooks(tasks: dict[str, Any]) -> None:
    task = tasks["tamp_smoke_video"]
    for doc in task.test_docs():
        (path,) = task.doc_to_visual(doc)
        assert isinstance(path, str) and path.endswith(".mp4") and Path(path).is_absolute() and Path(path).is_file()
        assert task.doc_to_text(doc) == doc["question"] + "\nAnswer the question using a single word."
        assert task.process_results(doc, [doc["answer"].upper()]) == {"exact_match": 1.0}
        assert task.process_results(doc, ["purple"]) == {"exact_match": 0.0}


def test_video_mc_task_hooks(tasks: dict[str, Any]) -> None:
    task = tasks["tamp_smoke_video_mc"]
    doc = task.test_docs()[0]
    letter, text = doc["answer"], doc["answer_text"]
    lines = task.doc_to_text(doc).splitlines()
    assert lines[0] == doc["question"] and lines[1:5] == [f"{'ABCD'[i]}. {o}" for i, o in enumerate(doc["options"])]
    assert lines[5] == "Answer with the option's letter from the given choices directly."
    wrong = next(x for x in "ABCD" if x != letter)
    for response, score in ((letter, 1.0), (f"({letter})", 1.0), (f"{letter}. {text}", 1.0), (f"{letter}.", 1.0),
                            (f"The answer is {letter}", 1.0), (text.title(), 1.0), (f"A clip in {text}", 1.0),
                            (wrong, 0.0), (f"{wrong}. {text}", 0.0), (" or ".join(doc["options"]), 0.0),
                            ("none of them", 0.0), ("", 0.0)):
        assert task.process_results(doc, [response]) == {"exact_match": score}, response


def test_chat_tasks_label_audio_and_video(tm: Any) -> None:
    """Chat models get messages built from doc_to_visual: the dicts' "type" keeps audio from becoming video."""
    from lmms_eval.protocol import ChatMessages
    from lmms_eval.tasks import get_task_dict

    chat = get_task_dict(["tamp_smoke_audio", "tamp_smoke_video"], tm, task_type="chat")
    audio_doc = chat["tamp_smoke_audio"].test_docs()[0]
    images, videos, audios = ChatMessages(messages=chat["tamp_smoke_audio"].doc_to_messages(audio_doc)).extract_media()
    assert (images, videos, audios) == ([], [], [str(utils.media_path(audio_doc["audio"]))])
    video_doc = chat["tamp_smoke_video"].test_docs()[0]
    images, videos, audios = ChatMessages(messages=chat["tamp_smoke_video"].doc_to_messages(video_doc)).extract_media()
    assert (images, videos, audios) == ([], [str(utils.media_path(video_doc["video"]))], [])


# --- a full evaluation through lmms-eval ---------------------------------------------------------------------
def _model_class() -> type:
    from lmms_eval.api.model import lmms

    class MediaOracle(lmms):
        """Answers from the media it is handed (never from the doc's answer), like a perfect model would;
        `constant` makes it answer one word to everything instead."""

        def __init__(self, constant: str | None = None) -> None:
            super().__init__()
            self.constant = constant
            self.seen: list[Any] = []

        def generate_until(self, requests: list[Any]) -> list[str]:
            out = []
            for req in requests:
                ctx, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                assert isinstance(gen_kwargs["until"], list) and gen_kwargs["max_new_tokens"] == 8
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                self.seen.append(visuals[0])
                if self.constant is not None:
                    out.append(self.constant)
                    continue
                answer = answer_from_media(ctx.splitlines()[0], visuals)
                options = dict(re.findall(r"^([A-D])\. (\w+)$", ctx, flags=re.M))
                out.append(next((k for k, v in options.items() if v == answer), answer) if options else answer)
            return out

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError

    return MediaOracle


def _evaluate(lm: Any, tasks: list[str], tm: Any) -> dict[str, Any]:
    from lmms_eval import evaluator

    return evaluator.simple_evaluate(model=lm, tasks=tasks, batch_size=1, task_manager=tm, log_samples=True,
                                     bootstrap_iters=0, verbosity="WARNING")


def test_simple_evaluate_end_to_end(tm: Any) -> None:
    oracle = _model_class()()
    out = _evaluate(oracle, list(AV_TASKS), tm)
    for task in AV_TASKS:
        assert out["results"][task]["exact_match,none"] == 1.0, task
        assert len(out["samples"][task]) == len(_rows(task.replace("tamp_smoke_", "") + ".jsonl"))
    assert sum(isinstance(v, dict) for v in oracle.seen) == 10 and sum(isinstance(v, str) for v in oracle.seen) == 18
    constant = _model_class()("low")
    out = _evaluate(constant, ["tamp_smoke_audio"], tm)
    share = sum(r["answer"] == "low" for r in _rows("audio.jsonl")) / 10
    assert 0 < share < 1 and out["results"]["tamp_smoke_audio"]["exact_match,none"] == pytest.approx(share)


# --- our tiny audio / video families through `harness run` ----------------------------------------------------
E2E = {
    ("tiny-qwen2-audio", "dense"): ("tamp_smoke_audio",),
    ("tiny-llava-onevision", "dense"): ("tamp_smoke_video", "tamp_smoke_video_mc"),
    ("tiny-qwen2.5-omni", "dense"): ("tamp_smoke_audio", "tamp_smoke_video"),
    ("tiny-qwen2.5-omni", "tamp"): ("tamp_smoke_audio", "tamp_smoke_video"),  # pruned on synthetic audio + video
    ("tiny-qwen2-vl", "dense"): ("tamp_smoke_video",),  # Qwen2-VL video input
    ("tiny-qwen2.5-vl", "dense"): ("tamp_smoke_video_mc",),
}


@pytest.mark.slow
@pytest.mark.parametrize("model,method", sorted(E2E))
def test_harness_run_on_tiny_av_family(model: str, method: str, tmp_path: Path, tiny_root: Path) -> None:
    """Prune (or not), evaluate the audio / video smoke tasks through lmms-eval, and file the records."""
    from harness.cli import main

    tasks = E2E[(model, method)]
    sparsity = "0" if method == "dense" else "0.5"
    assert main(["run", "--model", model, "--method", method, "--sparsity", sparsity, "--tasks", ",".join(tasks),
                 "--limit", "2", "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts"),
                 "--device", "cpu"]) == 0
    for task in tasks:
        records = list((tmp_path / "runs").rglob(f"{task}_limit2.json"))
        assert len(records) == 1, task
        rec = json.loads(records[0].read_text())
        assert "exact_match,none" in rec["metrics"] and rec["empty_answers"]["total"] == 2
        assert rec["method"] == method
        if method != "dense":
            assert rec["pruning"]["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.02)
            counts = rec["pruning"]["calibration"]["token_counts"]
            assert counts.get("audio", 0) > 0 and counts.get("video", 0) > 0 and counts.get("text", 0) > 0

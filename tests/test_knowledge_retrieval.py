"""Ingestion, versioning and hybrid retrieval on the sample guidelines."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medloop.cli import app
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.retrieval.segments import current_version, load_index
from medloop.testing import GUIDELINES, sample_index


@pytest.fixture
def indexed(settings, embedder):
    store = KnowledgeStore(settings.knowledge_db)
    report = ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    return store, report, Retriever(settings, store=store, embedder=embedder)


@pytest.mark.parametrize(
    "question, doc_ids",
    [
        ("高血压患者的降压目标是多少？", {"cn-hypertension"}),
        ("流感的抗病毒治疗应该什么时候开始", {"cn-influenza"}),
        ("冠心病合并慢阻肺能用β受体阻滞剂吗", {"comorbidity-notes"}),
        # both answer it (<7%): a multilingual embedder reads the Chinese one as well as the English one
        ("What is the HbA1c target for adults with diabetes?", {"ada-standards-of-care", "cn-t2dm"}),
        ("antiplatelet therapy after acute coronary syndrome", {"acc-aha-acs"}),
    ],
)
def test_questions_reach_the_right_guideline(indexed, question, doc_ids):
    hits = indexed[2].search(question, k=3)
    assert hits[0].chunk.doc_id in doc_ids
    assert hits[0].relevant


def test_newest_version_wins_and_superseded_is_excluded(indexed):
    _, report, retriever = indexed
    assert report.counts["superseded"] == 2
    bp = retriever.search("高血压 降压目标", k=10)
    assert {h.chunk.version for h in bp if h.chunk.doc_id == "cn-hypertension"} == {"2024"}
    ada = retriever.search("diabetes glycemic targets HbA1c", k=10)
    assert {h.chunk.version for h in ada if h.chunk.doc_id == "ada-standards-of-care"} == {"2025"}
    with_old = retriever.search("高血压 降压目标", k=20, include_superseded=True)
    old = [h for h in with_old if h.chunk.version == "2018"]
    assert old and all(h.chunk.superseded for h in old)


def test_unrelated_question_has_no_relevant_evidence(indexed):
    for q in ["骨折怎么处理", "How do I fix a broken leg?"]:
        assert not any(h.relevant for h in indexed[2].search(q, k=3))


def test_reingest_is_a_noop(indexed, settings, embedder):
    store, _, _ = indexed
    revision, chunks = store.revision(), len(store.chunks())
    again = ingest_paths(store, [GUIDELINES])
    assert again.counts["unchanged"] == 8 and again.counts["added"] == 0
    assert store.revision() == revision and len(store.chunks()) == chunks
    assert not sync_index(settings, store, embedder=embedder).changed


def test_older_version_arriving_later_is_superseded_at_once(settings, embedder, tmp_path):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"])
    late = ingest_paths(store, [GUIDELINES / "cn-hypertension-2018.md"])
    assert late.files[0].outcome == "added" and late.superseded == 1
    live = [v for v in store.versions("cn-hypertension") if not v["superseded"]]
    assert [v["version"] for v in live] == ["2024"]


def test_changed_file_same_version_is_updated_and_old_chunks_leave_the_index(settings, embedder, tmp_path):
    store = KnowledgeStore(settings.knowledge_db)
    doc = tmp_path / "g.md"
    doc.write_text("---\nid: g\nversion: '1'\n---\n# G\n\n## A\nwarfarin dosing in atrial fibrillation\n")
    ingest_paths(store, [doc])
    sync_index(settings, store, embedder=embedder)
    doc.write_text("---\nid: g\nversion: '1'\n---\n# G\n\n## A\napixaban dosing in atrial fibrillation\n")
    assert ingest_paths(store, [doc]).files[0].outcome == "updated"
    result = sync_index(settings, store, embedder=embedder)
    assert (result.added, result.removed, result.total) == (1, 1, 1)
    hit = Retriever(settings, store=store, embedder=embedder).search("apixaban", k=1)[0]
    assert "apixaban" in hit.chunk.text


def test_chunks_keep_metadata_and_follow_sections(indexed):
    store = indexed[0]
    chunks = [c for c in store.chunks() if c.doc_id == "cn-hypertension" and c.version == "2024"]
    assert {c.section for c in chunks} >= {"降压目标", "药物治疗"}
    c = chunks[0]
    assert (c.title, c.issuer, c.published) == ("中国高血压防治指南", "中国高血压联盟", "2024-08-01")


def test_long_chinese_text_is_split_with_overlap():
    from medloop.knowledge.chunking import chunk_text, units

    text = "## 长节\n" + "".join(f"第{i}句关于血压管理的建议。" for i in range(200))
    chunks = chunk_text(text, max_units=100, overlap=20)
    assert len(chunks) > 5 and all(units(c.text) <= 100 for c in chunks)
    assert chunks[0].text.split("\n")[-1] in chunks[1].text  # the last sentence carries over


def _bad_inputs(folder: Path) -> dict[str, str]:
    folder.mkdir()
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02binary" * 10)
    (folder / "empty.md").write_text("   \n")
    (folder / "latin1.txt").write_bytes("Blutdruck über 140".encode("latin-1"))
    (folder / "broken.md").write_text("---\nid: [unclosed\ntitle: x\n---\n# body\ntext\n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (folder / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{oops\n')
    shutil.copy(GUIDELINES / "cn-influenza-2025.md", folder / "good.md")
    (folder / "nometa.txt").write_text("Hand hygiene reduces hospital infections.\n")
    return {"binary.txt": "binary", "empty.md": "empty", "latin1.txt": "UTF-8", "broken.md": "front matter",
            "broken.pdf": "PDF", "bad.jsonl": "line 2"}


def test_bad_inputs_fail_alone_with_clear_errors(settings, tmp_path):
    expected = _bad_inputs(tmp_path / "in")
    store = KnowledgeStore(settings.knowledge_db)
    report = ingest_paths(store, [tmp_path / "in", tmp_path / "missing.md"])
    errors = {f.path.name: f.error for f in report.failed}
    for name, word in expected.items():
        assert word in errors[name], errors[name]
    assert "no such file" in errors["missing.md"]
    assert {f.path.name for f in report.files if f.outcome == "added"} == {"good.md", "nometa.txt"}
    nometa = next(f for f in report.files if f.path.name == "nometa.txt")
    assert any("no 'id'" in w for w in nometa.warnings)
    # nothing of a failed file reached the store (bad.jsonl's good first line included)
    assert {v["doc_id"] for v in store.versions()} == {"cn-influenza", "nometa"}


@pytest.mark.slow
def test_cli_ingest_reports_and_exits_1_on_failure(settings, tmp_path):
    _bad_inputs(tmp_path / "in")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "in")])
    assert result.exit_code == 1
    assert "failed" in result.output and "broken.md" in result.output
    search = CliRunner().invoke(app, ["search", "hand hygiene infections", "--json", "-k", "1"])
    assert search.exit_code == 0
    assert json.loads(search.stdout)[0]["doc_id"] == "nometa"
    status = json.loads(CliRunner().invoke(app, ["index", "status"]).stdout)
    assert status["count"] == len(KnowledgeStore(settings.knowledge_db).chunks()) and not status["behind_store"]


@pytest.mark.slow
def test_many_files_with_some_bad(settings, embedder, tmp_path):
    folder = tmp_path / "many"
    (folder / "sub").mkdir(parents=True)
    for i in range(600):
        (folder / "sub" / f"g{i}.txt").write_text(f"Guideline {i}: drug{i} dose is {i} mg daily.\n")
    for i in range(5):
        (folder / "sub" / f"bad{i}.md").write_bytes(b"\xff\xfe\x00garbage")
    store = KnowledgeStore(settings.knowledge_db)
    assert ingest_paths(store, [folder]).files == []  # not recursive: the sub-folder is not entered
    report = ingest_paths(store, [folder], recursive=True)
    assert report.counts["added"] == 600 and report.counts["failed"] == 5
    assert sync_index(settings, store, embedder=embedder).total == 600


def test_crash_between_store_and_index_is_caught_up(settings, embedder, monkeypatch):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2018.md"])
    sync_index(settings, store, embedder=embedder)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"])

    import medloop.retrieval.index as index_mod

    def crash(*a, **k):
        raise KeyboardInterrupt("simulated crash mid index write")

    monkeypatch.setattr(index_mod, "write_text_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        sync_index(settings, store, embedder=embedder)
    # readers still see the last complete version
    assert current_version(settings.index_dir) == 1 and load_index(settings.index_dir).meta["count"] > 0
    monkeypatch.undo()
    result = sync_index(settings, store, embedder=embedder)
    assert result.changed and result.total == len(store.chunks())
    assert not [p for p in settings.index_dir.iterdir() if p.name.startswith(".tmp-")]
    hit = Retriever(settings, store=store, embedder=embedder).search("降压目标", k=1)[0]
    assert hit.chunk.version == "2024"


@pytest.mark.slow
def test_kill_9_during_ingest_then_rerun_completes(settings, tmp_path):
    folder = tmp_path / "bulk"
    folder.mkdir()
    for i in range(300):
        (folder / f"g{i}.md").write_text(f"---\nid: g{i}\nversion: '1'\n---\n# G{i}\n\nstatin {i} mg therapy.\n")
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home)}
    cmd = [sys.executable, "-m", "medloop.cli", "ingest", str(folder)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = settings.knowledge_db
    deadline = time.time() + 120
    while time.time() < deadline and not (db.exists() and KnowledgeStore(db).revision() > 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = KnowledgeStore(db)
    stored = len(store.versions())
    assert 0 < stored <= 300 and len(store.chunks()) == stored  # whole files only
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(store.versions()) == 300 and len(store.chunks()) == 300
    assert load_index(settings.index_dir).meta["count"] == 300


def test_server_side_retriever_reloads_new_index_version(settings, embedder):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-influenza-2025.md"])
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    assert retriever.search("奥司他韦", k=1)[0].chunk.doc_id == "cn-influenza"
    assert not any(h.relevant for h in retriever.search("HbA1c target diabetes", k=3))
    ingest_paths(store, [GUIDELINES / "ada-diabetes-2025.md"])
    sync_index(settings, store, embedder=embedder)
    assert retriever.search("HbA1c target diabetes", k=1)[0].chunk.doc_id == "ada-standards-of-care"


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_index_types(settings, embedder, index_type):
    settings.index.type = index_type
    hits = sample_index(settings, embedder).search("acute coronary syndrome P2Y12", k=1)
    assert hits[0].chunk.doc_id == "acc-aha-acs"


def test_the_same_passage_in_two_documents_is_shown_and_cited_once(settings, embedder, tmp_path):
    text = (GUIDELINES / "cn-influenza-2025.md").read_text(encoding="utf-8")
    copy = tmp_path / "copy.md"  # the same guideline redistributed under another id, one punctuation mark changed
    copy.write_text(text.replace("id: cn-influenza", "id: hospital-flu-handout").replace("。", "；", 1),
                    encoding="utf-8")
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-influenza-2025.md", copy])
    sync_index(settings, store, embedder=embedder)
    hits = Retriever(settings, store=store, embedder=embedder).search("流感抗病毒治疗的时机", k=6)
    texts = [h.chunk.text.replace("；", "。") for h in hits]
    assert len(hits) >= 2 and len(texts) == len(set(texts))  # every passage once
    assert len({h.chunk.section for h in hits}) == len(hits)


@pytest.mark.slow
def test_cli_search_output_carries_no_third_party_noise(settings):
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home)}
    ingest = subprocess.run([sys.executable, "-m", "medloop.cli", "ingest", str(GUIDELINES)], env=env,
                            capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr
    assert "Loading weights" not in ingest.stderr and "kernels" not in ingest.stderr
    question = "What is the HbA1c target for adults with diabetes?"
    search = subprocess.run([sys.executable, "-m", "medloop.cli", "search", question, "-k", "1", "--json"], env=env,
                            capture_output=True, text=True)
    assert search.returncode == 0 and json.loads(search.stdout)[0]["doc_id"] in {"ada-standards-of-care", "cn-t2dm"}
    assert search.stderr == ""  # no import-time warnings, no weight-loading bars (they are behind --verbose)


class RecordingEmbedder:
    """The real embedder, recording the texts it is asked to embed; `fail_after` batches, it raises (an
    interrupted ingest)."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.texts, self.batches, self.fail_after = inner, [], 0, fail_after

    def get_embedding_dimension(self):
        return self.inner.get_embedding_dimension()

    def encode(self, texts, **kw):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.batches += 1
        self.texts += list(texts)
        return self.inner.encode(texts, **kw)


def vectors_in(index) -> int:
    return sum(s.dense.ntotal for s in index.segments)


def test_an_english_only_embedder_never_reads_chinese_chunks(english_settings, english_embedder):
    from medloop.knowledge.language import is_chinese

    settings, embedder = english_settings, english_embedder
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    recording = RecordingEmbedder(embedder)
    sync_index(settings, store, embedder=recording)
    english = [c for c in store.chunks() if not is_chinese(c.title + c.text)]
    assert recording.texts and not any(is_chinese(t) for t in recording.texts)
    assert vectors_in(load_index(settings.index_dir)) == len(english)
    hits = Retriever(settings, store=store, embedder=embedder).search("一般高血压患者血压应控制在多少以下", 3)
    assert hits[0].chunk.doc_id == "cn-hypertension" and hits[0].relevant  # BM25 and the lexicon find it

    settings.retrieval.embedder_multilingual = True  # a multilingual embedder reads everything
    recording = RecordingEmbedder(embedder)
    sync_index(settings, store, embedder=recording, rebuild=True)
    assert any(is_chinese(t) for t in recording.texts)
    assert vectors_in(load_index(settings.index_dir)) == len(store.chunks())


@pytest.mark.slow
def test_an_interrupted_index_write_resumes_with_the_embeddings_done(settings, embedder):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    settings.retrieval.embedder_multilingual = True  # every chunk is embedded: more batches
    first = RecordingEmbedder(embedder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        sync_index(settings, store, embedder=first, batch_size=4)
    assert current_version(settings.index_dir) is None and len(first.texts) == 8  # two batches done
    second = RecordingEmbedder(embedder)
    result = sync_index(settings, store, embedder=second, batch_size=4)
    total = len(store.chunks())
    assert result.total == total and len(second.texts) == total - 8  # only what was left
    assert not set(first.texts) & set(second.texts)
    index = load_index(settings.index_dir)
    assert vectors_in(index) == total
    # a vector kept from the interrupted run is the one a fresh encode gives
    staged = embedder.encode([first.texts[0]], normalize_embeddings=True)[0]
    assert float(np.concatenate([s.embeddings() for s in index.segments]).dot(staged).max()) > 0.9999
    assert not (settings.index_dir / ".staging").exists()  # cleared once published


def test_an_added_document_writes_one_segment_and_leaves_the_others_untouched(settings, embedder, tmp_path):
    """Adding to a large index costs the new document: the existing segments are listed again, not rewritten;
    removed chunks are hidden at once and dropped when their segment is merged."""
    import medloop.retrieval.index as index_mod

    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [p for p in sorted(GUIDELINES.iterdir()) if p.name != "ada-diabetes-2025.md"])
    sync_index(settings, store, embedder=embedder)
    (base,) = load_index(settings.index_dir).segments
    written = {f.name: f.stat().st_mtime_ns for f in base.folder.iterdir()}
    retriever = Retriever(settings, store=store, embedder=embedder)
    assert retriever.search("dual antiplatelet therapy duration", 1)[0].chunk.doc_id == "acc-aha-acs"
    held = retriever.index().segments[0]

    recording = RecordingEmbedder(embedder)
    ingest_paths(store, [GUIDELINES / "ada-diabetes-2025.md"])  # a newer version: 2024's chunks stay, superseded
    added = sync_index(settings, store, embedder=recording)
    new_chunks = [c for c in store.chunks() if c.version == "2025" and c.doc_id == "ada-standards-of-care"]
    assert added.added == len(new_chunks) and len(recording.texts) == len(new_chunks)  # only the new text
    second = load_index(settings.index_dir)
    assert [s.name for s in second.segments][0] == base.name and len(second.segments) == 2
    assert {f.name: f.stat().st_mtime_ns for f in base.folder.iterdir()} == written
    # the running reader keeps the segment it had loaded and reads only the new one
    hit = retriever.search("HbA1c target for most adults", 1)[0]
    assert hit.chunk.version == "2025" and retriever.index().segments[0] is held

    # a file re-ingested with other text: its old chunks leave the index without a rewrite of their segment
    (tmp_path / "acs.md").write_text((GUIDELINES / "acc-aha-acs-2025.md").read_text().replace("12 months", "6 mo"))
    ingest_paths(store, [tmp_path / "acs.md"])
    result = sync_index(settings, store, embedder=embedder)
    third = load_index(settings.index_dir)
    assert result.merged == 0 and [s.name for s in third.segments] == [s.name for s in second.segments] + \
        [s.name for s in third.segments[2:]]
    assert result.removed > 0 and len(third.dead) == result.removed and third.count == len(store.chunks())
    dead = set(third.dead.tolist())
    assert not dead & set(third.dense_search(embedder.encode(["antiplatelet"], normalize_embeddings=True), 50))
    assert not dead & set(third.sparse_search(["antiplatelet", "month"], 50))
    hits = Retriever(settings, store=store, embedder=embedder).search("dual antiplatelet therapy months", 5)
    assert hits and not dead & {h.chunk.chunk_id for h in hits}

    compact = index_mod.compact_index(settings)
    merged = load_index(settings.index_dir)
    assert compact.merged == 3 and len(merged.segments) == 1 and len(merged.dead) == 0
    assert merged.count == len(store.chunks()) and set(merged.live_ids().tolist()) == set(store.chunk_ids())
    assert not index_mod.compact_index(settings).changed  # one segment, nothing removed: nothing to do
    # segments no kept version lists are deleted
    kept = {n for m in settings.index_dir.glob("v*/meta.json") for n in json.loads(m.read_text())["segments"]}
    assert {p.name for p in (settings.index_dir / "segments").iterdir()} == kept


def test_small_segments_are_merged_as_they_accumulate(settings, embedder, tmp_path, monkeypatch):
    import medloop.retrieval.index as index_mod

    monkeypatch.setattr(index_mod, "MERGE_FACTOR", 3)
    store = sample_index(settings, embedder).store
    (base,) = load_index(settings.index_dir).segments
    counts = []
    for i in range(3):
        (tmp_path / f"g{i}.md").write_text(f"---\nid: note-{i}\nversion: '1'\n---\n# Note {i}\n\nzolpidem {i} mg.\n")
        ingest_paths(store, [tmp_path / f"g{i}.md"])
        counts.append((sync_index(settings, store, embedder=embedder).merged,
                       len(load_index(settings.index_dir).segments)))
    assert counts == [(0, 2), (0, 3), (3, 2)]  # the third one-chunk segment merges the three, never the base
    index = load_index(settings.index_dir)
    assert index.segments[0].name == base.name and len(index.segments[1]) == 3
    assert index.count == len(store.chunks())
    hits = Retriever(settings, store=store, embedder=embedder).search("zolpidem 2 mg", 3)
    assert {h.chunk.doc_id for h in hits} >= {"note-2"}


def test_an_index_of_an_older_layout_is_reported_and_rebuilt(settings, embedder, caplog):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"])
    old = settings.index_dir / "v1"  # one folder per version, no segments: what medloop wrote before
    old.mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({"version": 1, "store_revision": 0, "count": 3}))
    (settings.index_dir / "CURRENT").write_text("1")
    retriever = Retriever(settings, store=store, embedder=embedder)
    with caplog.at_level("ERROR", logger="medloop.retrieval"):
        assert retriever.search("降压目标", 3) == [] and retriever.search("降压目标", 3) == []
    assert [r.message for r in caplog.records].count(
        f"{old}: an index written by an older medloop; run `medloop index rebuild`") == 1  # said once
    result = sync_index(settings, store, embedder=embedder)
    assert result.total == len(store.chunks()) and retriever.search("降压目标", 1)[0].relevant


@pytest.mark.slow
def test_an_ingest_after_the_first_imports_neither_torch_nor_the_continual_room(settings):
    """The first ingest exports the embedder to ONNX; later ones embed with that export (onnxruntime)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MEDLOOP_HOME": str(settings.home)}
    first = subprocess.run([sys.executable, "-m", "medloop.cli", "ingest", str(GUIDELINES / "cn-hypertension-2024.md")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    probe = ("import sys; from medloop.cli import main; sys.argv = ['medloop', 'ingest', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
             "print(sorted(m for m in ('torch', 'sentence_transformers', 'medloop.continual') if m in sys.modules))")
    second = subprocess.run([sys.executable, "-c", probe, str(GUIDELINES / "cn-influenza-2025.md")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1] == "[]"
    assert "流感" in " ".join(c.text for c in KnowledgeStore(settings.knowledge_db).chunks())


def test_chunks_follow_their_chunker(settings, monkeypatch):
    """A chunk_size change re-chunks a file on its next ingest (same text: not "unchanged"), and `medloop index
    rechunk` re-chunks what is not ingested again, from the stored text."""
    from medloop.knowledge.chunking import Chunker

    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md", GUIDELINES / "cn-influenza-2025.md"])
    before = {c.doc_id: 0 for c in store.chunks()}
    for c in store.chunks():
        before[c.doc_id] += 1
    small = Chunker(size=30, overlap=0)
    again = ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"], chunker=small)
    assert again.files[0].outcome == "updated"
    counts = {}
    for c in store.chunks():
        counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
    assert counts["cn-hypertension"] > before["cn-hypertension"] and counts["cn-influenza"] == before["cn-influenza"]
    assert ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"], chunker=small).files[0].outcome == "unchanged"
    monkeypatch.setenv("MEDLOOP_HOME", str(settings.home))
    monkeypatch.setenv("MEDLOOP_CHUNKS__SIZE", "30")
    monkeypatch.setenv("MEDLOOP_CHUNKS__OVERLAP", "0")
    store.close()
    result = CliRunner().invoke(app, ["index", "rechunk"])
    assert result.exit_code == 0, result.output
    assert "1 documents re-chunked" in result.output
    store = KnowledgeStore(settings.knowledge_db)
    influenza = sum(c.doc_id == "cn-influenza" for c in store.chunks())
    assert influenza > before["cn-influenza"]
    assert load_index(settings.index_dir).count == store.chunk_count()



BM25_QUERIES = ["高血压患者的降压目标是多少？", "HbA1c target for adults with type 2 diabetes", "阿司匹林 双抗 多久"]


def _oracle_check(index, rtol_of) -> None:
    """bm25s' Lucene BM25 (the oracle) over the tokens the index holds, against the index's own sparse search, for
    every chunk a query reaches: `rtol_of(segment)` is how far that segment may be from the oracle."""
    import bm25s

    from medloop.retrieval import bm25
    from medloop.retrieval.tokenize import tokenize

    ids, corpus, owner = [], [], []
    for s in index.segments:
        m = s.doc_terms
        for row, chunk_id in enumerate(s.ids.tolist()):
            cols, counts = m.indices[m.indptr[row]:m.indptr[row + 1]], m.data[m.indptr[row]:m.indptr[row + 1]]
            ids.append(chunk_id)
            corpus.append([s.terms[j] for j, n in zip(cols, counts, strict=True) for _ in range(int(n))])
            owner.append(s)
    oracle = bm25s.BM25(method="lucene", k1=bm25.K1, b=bm25.B)
    oracle.index(corpus, show_progress=False)
    for question in BM25_QUERIES:
        terms = sorted(set(tokenize(question)))
        ours = index.sparse_search(terms, len(ids))
        known = [t for t in terms if any(t in doc for doc in corpus)]
        theirs = oracle.get_scores(known)
        assert ours and set(ours) == {i for i, s in zip(ids, theirs, strict=True) if s > 0}, question
        for i, chunk_id in enumerate(ids):
            if chunk_id in ours:
                rtol = rtol_of(owner[i])
                assert theirs[i] / (1 + rtol) - 1e-5 <= ours[chunk_id] <= theirs[i] * (1 + rtol) + 1e-5, question


def test_one_segment_scores_as_bm25s_lucene_does(settings, embedder):
    sample_index(settings, embedder)
    index = load_index(settings.index_dir)
    assert len(index.segments) == 1
    _oracle_check(index, lambda segment: 1e-4)


def test_several_segments_score_within_their_average_length_of_one_index(settings, embedder):
    """Segments share the whole index's IDF but normalise length by their own average (bm25.postings): a chunk's
    score is off the one-index score by at most the ratio of its segment's average length to the index's."""
    store = KnowledgeStore(settings.knowledge_db)
    files = sorted(GUIDELINES.iterdir())
    for part in (files[:2], files[2:]):
        ingest_paths(store, part)
        sync_index(settings, store, embedder=embedder)
    index = load_index(settings.index_dir)
    assert len(index.segments) == 2
    average = {s.name: float(s.doc_terms.sum()) / len(s) for s in index.segments}
    overall = sum(float(s.doc_terms.sum()) for s in index.segments) / sum(len(s) for s in index.segments)
    _oracle_check(index, lambda s: max(average[s.name], overall) / min(average[s.name], overall) - 1)

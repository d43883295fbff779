"""The stale-answer check: an answer that follows a superseded guideline version is told so, as text and data."""

import json

import httpx
import pytest

from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.retrieval.claims import values
from medloop.retrieval.evidence import stale_note
from medloop.retrieval.staleness import disagreements, stale_claims
from medloop.serving import build_app
from medloop.serving.engine import OPTIONAL_FIELDS
from medloop.testing import GUIDELINES, LiveServer, ScriptedEngine, ask


@pytest.fixture
def store(settings):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    return store


def key(v):
    return v.number, v.unit, v.direction


def test_claims_are_read_with_their_units_and_directions():
    found = [key(v) for v in values("血压<140/90 mmHg，HbA1c 7.0%，48小时内，12 months, type 2, 12-lead")]
    assert found == [("140/90", "mmHg", "below"), ("7", "%", ""), ("48", "h", "below"), ("12", "mo", "")]
    assert [key(v) for v in values("<7%, 6.50%, 10 hours")] == [("7", "%", "below"), ("6.5", "%", ""),
                                                              ("10", "h", "")]  # as numbers
    same = [key(v) for v in values("降至<140/90 mmHg；140/90 mmHg以下；below 140/90 mmHg；低于140/90 mmHg")]
    assert same == [("140/90", "mmHg", "below")] * 4
    assert [key(v) for v in values("≥140/90 mmHg；140/90 mmHg以上；at least 140/90 mmHg")] == \
        [("140/90", "mmHg", "above")] * 3


def test_a_blood_pressure_written_as_its_two_parts_is_one_pair():
    """What the fresh stale sets found read wrong: only the diastolic part carried a unit, "下面" as a direction, the
    unit written "毫米汞柱", and each part named a few words before its number."""
    same = [key(v) for v in values("收缩压<140，舒张压<90 mmHg；收缩压低于140 mmHg，舒张压低于90 mmHg；"
                                    "高压140低压90以下；systolic below 140 and diastolic below 90 mmHg；"
                                    "稳定在140/90 mmHg下面；降到140/90毫米汞柱以下；"
                                    "a systolic pressure below 140 mmHg and a diastolic pressure below 90 mmHg")]
    assert same == [("140/90", "mmHg", "below")] * 7
    assert [key(v) for v in values("收缩压≥140 mmHg和/或舒张压≥90 mmHg")] == [("140/90", "mmHg", "above")]
    apart = [key(v) for v in values("收缩压<140，舒张压>90")]  # opposite directions are two claims
    assert apart == [("140", "mmHg", "below"), ("90", "mmHg", "above")]
    assert [key(v) for v in values("收缩压<140 mmHg，服药3个月")] == [("140", "mmHg", "below"), ("3", "mo", "")]


def test_a_blood_pressure_said_aloud_or_with_a_spaced_unit_is_read():
    """What stale_fresh3 found read wrong: "under 140 over 90" gave no value; "160 mm Hg" no unit."""
    said = [key(v) for v in values("getting under 140 over 90 is the aim; below 140/90 mm Hg; 140 over 90 or lower")]
    assert said == [("140/90", "mmHg", "below")] * 3
    assert [key(v) for v in values("a systolic of 160 mm Hg or more")] == [("160", "mmHg", "above")]
    assert [key(v) for v in values("3 over 4 weeks")] == [("4", "wk", "above")]  # no pressure: "over 4 weeks"



def test_a_target_with_no_direction_is_a_ceiling_and_the_parts_are_read_from_further_back():
    """What stale_fresh4 found read wrong: "目标是140/90" matched the live diagnostic "≥140/90"; "Systolic should be
    kept below 140" was too far back to be a part; "the top number", "the bottom number" were no parts."""
    for text in ("您的血压目标是140/90，现在", "140/90 mmHg是降压的目标上限", "A goal of 140/90 is enough"):
        assert [key(v) for v in values(text)][0] == ("140/90", "mmHg", "below"), text
    assert [key(v) for v in values("诊室血压140/90可以诊断")] == [("140/90", "mmHg", "")]  # no target, no direction
    assert [key(v) for v in values("目标<130/80，诊断140/90")] == [("130/80", "mmHg", "below"), ("140/90", "mmHg", "")]
    for text in ("Systolic should be kept below 140 mmHg and diastolic below 90 mmHg for typical patients.",
                 "Keep the top number under 140 and the bottom number under 90."):
        assert [key(v) for v in values(text)] == [("140/90", "mmHg", "below")], text



def test_values_in_words_and_parts_named_after_their_numbers_are_read():
    """What stale_fresh5 found read wrong: numbers in words, a target word 23 characters back, "140 systolic"."""
    assert [key(v) for v in values("降压治疗应使血压低于一百四十/九十毫米汞柱")] == [("140/90", "mmHg", "below")]
    assert [key(v) for v in values("疗程不超过六个月；HbA1c百分之七以下")] == \
        [("6", "mo", "below"), ("7", "%", "below")]
    assert [key(v) for v in values("for twelve months, under one hundred forty over ninety")] == \
        [("12", "mo", ""), ("140/90", "mmHg", "below")]
    assert values("一般高血压患者一线用药；type two diabetes; 三分之一的患者；1/3的患者") == []  # words, not values
    assert [key(v) for v in values("The goal blood pressure is 140/90 mm Hg.")] == [("140/90", "mmHg", "below")]
    assert [key(v) for v in values("lowered to less than 140 systolic and 90 diastolic")] == \
        [("140/90", "mmHg", "below")]



def test_ceilings_in_english_words_and_a_systolic_part_far_back_are_read():
    """What stale_fresh6 found read wrong."""
    for text in ("keeping your blood pressure within 140/90 mmHg", "as long as it doesn't exceed 140/90",
                 "it should not exceed 140/90 mmHg", "Systolic pressure should come down to under 140 mmHg and "
                 "diastolic to under 90 mmHg"):
        assert [key(v) for v in values(text)] == [("140/90", "mmHg", "below")], text
    assert [key(v) for v in values("exceeding 140/90 mmHg; up to 6 months")] == \
        [("140/90", "mmHg", "above"), ("6", "mo", "below")]


def test_years_in_chinese_are_a_duration_and_a_year_of_the_calendar_is_not():
    """What unseen-c found read wrong: "巩固治疗至少3年" was no value at all."""
    assert [key(v) for v in values("再巩固治疗至少3年；巩固治疗三年")] == [("3", "y", "above"), ("3", "y", "")]
    assert values("慢性乙型肝炎防治指南（2019年版），2022年12月发布") == []


def test_a_value_that_holds_for_a_group_too_is_everyones(store):
    """"elderly patients included" widens the claim; it does not make it the elderly's (stale_fresh6)."""
    for answer in ("Get it below 140/90 and you've reached the goal, elderly patients included.",
                   "血压降到140/90以下就达标了，老年人也是一样。",
                   "Below 140/90 mmHg for everyone, including the elderly."):
        assert [c.claim for c in stale_claims(answer, ["cn-hypertension"], store)], answer
    assert stale_claims("For patients aged 80 and over, below 140/90 mmHg if tolerated.", ["cn-hypertension"],
                        store) == []

def test_a_value_is_about_whom_its_own_part_names(store):
    """The elderly named after the general target do not make it theirs (stale_fresh4)."""
    hypertension = ["cn-hypertension"]
    [claim] = stale_claims("高血压治疗的目标血压是140/90 mmHg以下，老年人可以放宽到150/90。", hypertension, store)
    assert (claim.claim, claim.kind) == ("140/90 mmHg", "value")
    assert stale_claims("老年人可以先降到150/90 mmHg以下，耐受的话再降到140/90 mmHg以下。", hypertension, store) == []


@pytest.mark.parametrize(("answer", "claim"), [
    ("Amlodipine monotherapy is a fine way to begin treatment.", "Amlodipine"),  # "-dipine": a CCB
    ("Hydrochlorothiazide alone is a reasonable first drug.", "Hydrochlorothiazide"),  # "-thiazide": a diuretic
    ("Bisoprolol is acceptable as first-line monotherapy.", "Bisoprolol"),  # its own line and "-olol"
    ("初始降压可以单用氢氯噻嗪。", "氯噻嗪"),
    ("起始治疗可以选吲达帕胺。", "帕胺"),
    ("Any of CCBs or diuretics may be used as initial therapy.", "CCBs"),  # an abbreviation's plural
])
def test_a_drug_is_read_as_its_class_by_its_stem(store, answer, claim):
    """What stale_fresh4 found: a drug the lexicon did not know by name was no claim, though its INN stem names
    a class only the 2018 guideline lists for initial therapy."""
    assert claim in [c.claim for c in stale_claims(answer, ["cn-hypertension"], store)]


def test_a_drug_of_a_class_the_live_version_names_is_current(store):
    assert stale_claims("合并蛋白尿者优先选用贝那普利或缬沙坦。", ["cn-hypertension"], store) == []
    assert stale_claims("With proteinuria, enalapril or losartan is preferred.", ["cn-hypertension"], store) == []
    """"钙离子拮抗剂" is the calcium channel blocker the 2018 guideline lists for initial therapy."""
    [claim] = stale_claims("氨氯地平这种钙离子拮抗剂单独用来起始治疗没问题。", ["cn-hypertension"], store)
    assert (claim.claim, claim.kind) in {("钙离子拮抗剂", "name"), ("地平", "name")}
    [english] = stale_claims("A calcium antagonist alone is fine to start with.", ["cn-hypertension"], store)
    assert (english.claim, english.kind) == ("calcium antagonist", "name")


def test_doses_concentrations_and_weeks_are_claims_in_either_language():
    found = [key(v) for v in values("首剂1 mg，肾功能不全者从每日50 mg开始；尿酸＜360 μmol/L（6 mg/dL）；缓解后2～4周")]
    assert found == [("1", "mg", ""), ("50", "mg", ""), ("360", "umol/L", "below"), ("6", "mg/dL", ""),
                     ("4", "wk", "")]
    assert [key(v) for v in values("below 360 umol/L, 2 to 4 weeks, 1 mg, 1000 IU, 12.5 mcg, 2 mg/dL")] == \
        [("360", "umol/L", "below"), ("4", "wk", ""), ("1", "mg", ""), ("1000", "IU", ""), ("12.5", "ug", ""),
         ("2", "mg/dL", "")]
    assert values("50 mgs, 3 hx") == []  # a unit is whole: "mgs" and "hx" are not mg and h


def test_a_chinese_value_is_for_whom_its_clause_names_before_it(tmp_path, settings):
    """"别嘌醇起始剂量每日不超过100 mg，肾功能不全者从每日50 mg开始": the 100 mg is everyone's, the renal patients
    are named after it and get their own 50 mg; an answer giving the 100 mg is current, the superseded 1 mg is not."""
    old, new = tmp_path / "g-2019.md", tmp_path / "g-2023.md"
    head = "---\nid: g\ntitle: 痛风\nversion: \"{v}\"\nissuer: t\npublished: {v}-01-01\nlanguage: zh\n---\n"
    old.write_text(head.format(v="2019") + "## 用药\n秋水仙碱首剂1 mg。别嘌醇起始剂量每日100 mg。\n", encoding="utf-8")
    new.write_text(head.format(v="2023") + "## 用药\n别嘌醇起始剂量每日不超过100 mg，肾功能不全者从每日50 mg开始。\n",
                   encoding="utf-8")
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [old, new])
    assert stale_claims("别嘌醇起始剂量每日不超过100 mg。", ["g"], store) == []
    assert stale_claims("Allopurinol should be started at no more than 100 mg a day.", ["g"], store) == []
    assert [c.claim for c in stale_claims("Take 1 mg of colchicine first.", ["g"], store)] == ["1 mg"]


def test_the_numbers_of_a_blood_pressure_are_not_an_age(store):
    """"130/80" holds an "80", a name of the elderly in the lexicon: read as one, it made the whole clause about
    the elderly, whose live target (<140/90) then hid the general one the answer gives."""
    answer = "大部分高血压病人的目标血压是140/90 mmHg以内，高危的人才需要降到130/80 mmHg。"
    assert [c.claim for c in stale_claims(answer, ["cn-hypertension"], store)] == ["140/90 mmHg"]


def test_an_answer_following_the_2018_target_is_flagged_in_chinese(store):
    [claim] = stale_claims("一般高血压患者血压应控制在140/90 mmHg以下。", ["cn-hypertension"], store)
    assert (claim.stale_version, claim.live_version, claim.live_says) == ("2018", "2024", "<130/80 mmHg")
    assert stale_note(claim, "zh") == \
        "注意：回答中的“140/90 mmHg”与2018版一致；2024版已更新为<130/80 mmHg（降压目标）。"


def test_an_english_answer_is_checked_against_the_chinese_guideline_and_told_in_english(store):
    [claim] = stale_claims("Most patients with hypertension should be lowered to <140/90 mmHg.", ["cn-hypertension"],
                           store)
    assert stale_note(claim, "en").startswith("Note: “<140/90 mmHg” in this answer matches the 2018 version; "
                                              "the 2024 version recommends <130/80 mmHg")


@pytest.mark.parametrize("answer", [
    "一般高血压患者应将血压降至<130/80 mmHg。",  # the live target
    "80岁及以上高龄老人可先降至<150/90 mmHg，如能耐受再降至<140/90 mmHg。",  # 140/90 is still live, for them
    "诊断阈值仍为诊室血压≥140/90 mmHg。",  # and still the diagnostic threshold
    "多喝水，注意休息。",  # no claim at all
])
def test_current_answers_are_not_flagged(store, answer):
    assert stale_claims(answer, ["cn-hypertension"], store) == []


def test_a_drug_class_only_the_superseded_version_names_is_flagged(store):
    claims = stale_claims("初始治疗可以选用利尿剂。", ["cn-hypertension"], store)
    assert [(c.claim, c.kind, c.stale_version, c.live_version) for c in claims] == [("利尿剂", "name", "2018", "2024")]
    assert stale_note(claims[0], "zh").startswith("注意：回答中的“利尿剂”见于2018版，2024版已不再提及（")
    [english] = stale_claims("For initial therapy a diuretic can be used.", ["cn-hypertension"], store)
    assert (english.claim, english.kind) == ("diuretic", "name")
    # named by the live version too: current
    assert stale_claims("合并蛋白尿者优先选用ACEI或ARB。", ["cn-hypertension"], store) == []


def test_a_guideline_without_older_versions_is_never_flagged(store):
    assert stale_claims("HbA1c控制目标为<8.0%。", ["cn-t2dm"], store) == []


RA = """---
id: hospital-ra
title: 类风湿关节炎诊疗规范
version: "{version}"
issuer: 本院风湿科
published: {published}
language: zh
---
# 类风湿关节炎诊疗规范（{version}）

## 糖皮质激素
{steroids}

## 监测
{monitoring}
"""


@pytest.fixture
def hospital_ra(tmp_path):
    """A hospital's own guideline on a topic no lexicon line covers, whose new version states the old values again,
    on other points (as unseen-b's rheumatoid arthritis guideline does)."""
    (tmp_path / "ra-2018.md").write_text(RA.format(
        version="2018", published="2018-04-01", monitoring="每1～3个月评估一次疾病活动度。",
        steroids="中高疾病活动度患者可短期联用小剂量糖皮质激素，疗程不超过6个月。"), encoding="utf-8")
    (tmp_path / "ra-2024.md").write_text(RA.format(
        version="2024", published="2024-05-01", steroids="糖皮质激素仅作为过渡治疗，应在3个月内逐渐减停。",
        monitoring="疾病活动期每月评估一次疾病活动度，治疗6个月仍未达标应调整方案。"), encoding="utf-8")
    store = KnowledgeStore(tmp_path / "knowledge.db")
    ingest_paths(store, [tmp_path])
    return store


@pytest.mark.parametrize(("answer", "stale"), [
    ("类风湿关节炎伴中高疾病活动度可联用小剂量糖皮质激素，疗程不超过6个月。", ["6个月"]),  # live "6个月": monitoring
    ("类风湿关节炎应每1～3个月评估一次疾病活动度。", ["3个月"]),  # live "3个月": tapering steroids
    ("糖皮质激素应在3个月内逐渐减停。", []),  # the live version's own point
    ("治疗6个月仍未达标就要调整方案。", []),
])
def test_a_value_the_live_version_states_on_another_point_is_still_stale(hospital_ra, answer, stale):
    assert [c.claim for c in stale_claims(answer, ["hospital-ra"], hospital_ra)] == stale


@pytest.fixture
def gateway(settings, store, embedder):
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    app = build_app(settings, ScriptedEngine("一般高血压患者血压应控制在<140/90 mmHg以下。"), retriever)
    with LiveServer(app) as live:
        yield live


def test_the_response_carries_stale_claims_plain_and_streamed(gateway):
    question = "一般高血压患者血压应控制在多少以下"
    response = ask(gateway.client(), question, model="thinker")
    message = response.choices[0].message.content
    assert "⚠️ 注意：回答中的“<140/90 mmHg”与2018版一致；2024版已更新为<130/80 mmHg" in message
    evidence = response.model_extra["evidence"]
    claims = [c for e in evidence for c in e["stale_claims"]]
    assert [(c["guideline_id"], c["stale_version"], c["live_says"]) for c in claims] == \
        [("cn-hypertension", "2018", "<130/80 mmHg")]

    chunks = list(ask(gateway.client(), question, model="thinker", stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == message
    last_evidence = [c.model_extra["evidence"] for c in chunks if (c.model_extra or {}).get("evidence")][-1]
    assert [c for e in last_evidence for c in e["stale_claims"]] == claims
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "medloop_stale_answers_total 2.0" in metrics


def test_a_structured_answer_is_checked_where_the_model_wrote_it(settings, store, embedder):
    """JSON content and tool-call arguments are read by the stale-answer check; its finding rides in `evidence` and
    the answer stays parseable (no warning appended), plain and streamed."""
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    question = "一般高血压患者血压应控制在多少以下"
    as_json = ScriptedEngine('{"target": "一般高血压患者血压应控制在<140/90 mmHg以下"}', serves=OPTIONAL_FIELDS)
    as_call = ScriptedEngine("", call=("record_target", '{"note": "一般高血压患者血压应控制在<140/90 mmHg以下"}'),
                             serves=OPTIONAL_FIELDS)
    for engine, fields in ((as_json, {"response_format": {"type": "json_object"}}),
                           (as_call, {"tools": [{"type": "function", "function": {"name": "record_target"}}]})):
        with LiveServer(build_app(settings, engine, retriever)) as live:
            r = ask(live.client(), question, model="thinker", **fields)
            chunks = list(ask(live.client(), question, model="thinker", stream=True, **fields))
        json.loads(r.choices[0].message.content or "{}")
        arguments = [c.function.arguments for c in r.choices[0].message.tool_calls or []]
        assert all(json.loads(a) for a in arguments)
        claims = [c["live_says"] for e in r.model_extra["evidence"] for c in e["stale_claims"]]
        assert claims == ["<130/80 mmHg"], fields
        streamed = [c.model_extra["evidence"] for c in chunks if (c.model_extra or {}).get("evidence")]
        assert streamed == [r.model_extra["evidence"]]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            (r.choices[0].message.content or "")


@pytest.fixture
def retriever(settings, store, embedder):
    sync_index(settings, store, embedder=embedder)
    return Retriever(settings, store=store, embedder=embedder)


def evidence(retriever, question):
    return [h for h in retriever.search(question, 3) if h.relevant]


def test_a_training_answer_may_state_only_what_its_evidence_states_clause_for_clause(retriever):
    """The promotion gate's data check: a value or name the question's evidence does not state for the same thing,
    or that only a superseded version states, is unsupported; an answer without either has nothing to disagree on."""
    bp, a1c = "What is the general blood pressure target in the 2024 Chinese hypertension guideline?", \
        "What A1C goal do the ADA Standards give for most nonpregnant adults?"
    store = retriever.store

    def check(answer, question):
        return disagreements(answer, evidence(retriever, question), store)

    assert check("An A1C goal below 7% is appropriate for many adults.", a1c) == (1, [])
    assert check("An A1C goal below 7% is appropriate for many adults.", bp) == (1, ["7%"])
    assert check("一般高血压患者血压应控制在<140/90 mmHg以下。", "一般高血压患者血压应控制在多少以下") == \
        (1, ["<140/90 mmHg"])
    assert check("Lower it if tolerated.", bp) == (0, [])
    # a value the evidence states for someone else (the elderly), or as another kind of number (a diagnostic
    # threshold, not a target), is not support
    assert check("一般高血压患者的降压目标是<150/90 mmHg。", "一般高血压患者的降压目标是多少")[1] == ["<150/90 mmHg"]
    assert check("HbA1c ≥7.0% is the threshold for diagnosing diabetes.", "糖尿病的诊断标准是什么")[1] == ["≥7.0%"]
    assert check("空腹血糖≥11.1 mmol/L即可诊断糖尿病。", "糖尿病的诊断标准是什么")[1] == ["≥11.1 mmol/L"]
    assert check("空腹血糖≥7.0 mmol/L即可诊断糖尿病。", "糖尿病的诊断标准是什么") == (1, [])
    # the wrong drug for the concept
    assert check("重症流感应尽早使用二甲双胍。", "流感什么时候用抗病毒药")[1] == ["二甲双胍"]
    assert check("重症流感应在48小时内使用奥司他韦。", "流感什么时候用抗病毒药") == (2, [])


def test_the_gate_reads_a_months_answers_against_their_evidence(retriever):
    from medloop.continual.gate import data_signals

    def row(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    a1c = "An A1C goal below 7% is appropriate for many adults."
    signals = data_signals([
        row("What A1C goal do the ADA Standards give for most nonpregnant adults?", a1c),  # agrees
        row("What is the general blood pressure target in the 2024 Chinese hypertension guideline?", a1c),  # not
        row("Can children with influenza take aspirin?", "No: avoid aspirin in children."),  # no value to check
        row("How do I reset my router password?", "Hold the reset button for 30 seconds."),  # off-domain
    ], retriever, 3)
    assert (signals["in_domain"].candidate, signals["in_domain"].n) == (0.75, 4)
    agreement = signals["evidence_agreement"]
    assert (round(agreement.candidate, 3), agreement.n) == (0.667, 3)  # aspirin is named by its evidence
    assert agreement.examples == ["'What is the general blood pressure target in the 2024 Chines' answered with 7%"]


def test_the_check_meets_its_targets_on_the_dev_set(store):
    """CI asserts on the dev set only; the held-out set is reported (bench/stale.py, docs/evaluation.md)."""
    from medloop.retrieval import quality

    result = quality.stale_check_quality(store, quality.stale_set("dev"))
    assert result["detection"] >= 0.9 and result["false_flag_rate"] <= 0.05, result["per_answer"]


def test_response_models_refuse_a_field_they_do_not_declare():
    """The stale claim goes on the wire as the check found it, `kind` included; a field a response model does not
    declare fails instead of being dropped silently (as `kind` once was)."""
    import pydantic

    from medloop.retrieval.staleness import StaleClaim
    from medloop.serving.responses import Evidence, ModelCard

    claim = StaleClaim("利尿剂", "g", "1", "2", "", "s", kind="name")
    evidence = Evidence(index=1, guideline_id="g", title="t", issuer="i", version="2", published="2024-01-01",
                        section="s", quote="q", chunk_id=1, score=0.5, relevance=0.9, stale_claims=[claim])
    assert evidence.model_dump()["stale_claims"][0]["kind"] == "name"
    with pytest.raises(pydantic.ValidationError, match="extra"):
        ModelCard(id="medical", revision="v3")


def test_the_cli_offers_every_packaged_stale_set():
    from typing import get_args

    from medloop.cli.evaluate import StaleSet
    from medloop.retrieval.quality import STALE_SETS, stale_set

    assert get_args(StaleSet) == STALE_SETS
    assert all(stale_set(name).exists() for name in STALE_SETS)

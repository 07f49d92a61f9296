"""The multiple-choice task reader: every layout of the four benchmarks' JSONL exports and plain
rows, one-line errors naming file and line, seeded splits and the prompt texts."""
import json

import numpy as np
import pytest

from dynamics import knowledge as kw
from dynamics import mc_tasks as mt
from models.errors import OntogenyError

ROWS = {
    "arc": {"id": "Mercury_1", "question": "Which gas do plants take in?",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["1", "2", "3", "4"]},
            "answerKey": "2"},
    "openbookqa": {"id": "7-980", "question_stem": "The sun is responsible for",
                   "choices": {"text": ["puppies", "plants sprouting", "the moon", "rain"],
                               "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "commonsenseqa": {"id": "x", "question": "Where is a river?", "question_concept": "river",
                      "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["valley", "sky", "desk", "cup", "shoe"]},
                      "answerKey": "A"},
    "race": {"example_id": "high1.txt", "article": "Tom likes tea. He drinks it daily.",
             "question": "What does Tom drink?", "options": ["milk", "tea", "juice", "water"], "answer": "B"},
    "ai2": {"id": "q", "question": {"stem": "Ice is", "choices": [{"label": "A", "text": "hot"},
                                                                 {"label": "B", "text": "cold"}]}, "answerKey": "B"},
    "plain": {"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": "B", "context": "Arithmetic."},
}
EXPECTED = {"arc": ("Which gas do plants take in?", 4, 1, ""), "openbookqa": ("The sun is responsible for", 4, 1, ""),
            "commonsenseqa": ("Where is a river?", 5, 0, ""),
            "race": ("What does Tom drink?", 4, 1, "Tom likes tea. He drinks it daily."),
            "ai2": ("Ice is", 2, 1, ""), "plain": ("2 + 2?", 3, 1, "Arithmetic.")}


def write(tmp_path, rows, name="tasks.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_layout_reads_to_the_same_item(tmp_path, fmt):
    items, found = mt.read_tasks(write(tmp_path, [ROWS[fmt]]))
    question, n_choices, answer, context = EXPECTED[fmt]
    assert found == fmt and len(items) == 1
    item = items[0]
    assert (item.question, len(item.choices), item.answer, item.context) == (question, n_choices, answer, context)


def test_mixed_file_blank_lines_and_integer_answers(tmp_path):
    mmlu = {"question": "Pick", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 3}
    completion = {"context": "the cat", "choices": [" sat", " ran"], "answer": 1}       # the evaluate study's rows
    items, found = mt.read_tasks(write(tmp_path, [ROWS["arc"], "", "   ", mmlu, ROWS["race"], completion]))
    assert [i.answer for i in items] == [1, 3, 1, 1] and found == "arc+plain+race"
    assert (items[-1].question, items[-1].choices, items[-1].context) == ("the cat", ("sat", "ran"), "")


@pytest.mark.parametrize("row,fragment", [
    ("{not json", "is not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": ""}, "unlabelled"),
    ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}, "is not one of"),
    ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"}, "of one length"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "neither a letter"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "neither a letter"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "1 choices"),
    ({"question": "q", "choices": ["a", ""], "answer": 0}, "non-empty string"),
    ({"question": "", "choices": ["a", "b"], "answer": 0}, "question is missing"),
    ({"article": 3, "question": "q", "options": ["a", "b"], "answer": "A"}, "must be a string"),
    ({"text": "hello", "label": 1}, "not a multiple-choice row"),
])
def test_a_malformed_row_is_one_line_naming_file_and_line(tmp_path, row, fragment):
    path = write(tmp_path, [ROWS["plain"], row if isinstance(row, str) else json.dumps(row)])
    with pytest.raises(OntogenyError) as e:
        mt.read_tasks(path)
    message = str(e.value)
    assert "\n" not in message and f"{path} line 2" in message and fragment in message, message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(OntogenyError, match="does not exist"):
        mt.read_tasks(tmp_path / "nope.jsonl")
    with pytest.raises(OntogenyError, match="holds no items"):
        mt.read_tasks(write(tmp_path, ["", " "]))


def test_split_and_sample_are_seeded_and_disjoint():
    train, test = mt.split(20, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15 and not set(train) & set(test)
    assert set(train) | set(test) == set(range(20))
    np.testing.assert_array_equal(mt.split(20, 0.25, seed=3)[1], test)
    assert not np.array_equal(mt.split(20, 0.25, seed=4)[1], test)
    np.testing.assert_array_equal(mt.sample(10, 0, 0, 1), np.arange(10))
    s = mt.sample(100, 7, 0, 1)
    assert len(s) == 7 and np.all(np.diff(s) > 0) and not np.array_equal(s, mt.sample(100, 7, 0, 2))


def test_prompt_texts():
    item = mt.MCItem("2 + 2?", ("3", "4"), 1, "Arithmetic.")
    assert mt.prompt_text(item) == "Arithmetic.\n\nQuestion: 2 + 2?\nA. 3\nB. 4\nAnswer:"
    assert mt.solved_text(item) == mt.prompt_text(item) + " B"
    shot = mt.MCItem("1 + 1?", ("2", "5"), 0)
    assert mt.fewshot_text(item, [shot]) == "Question: 1 + 1?\nA. 2\nB. 5\nAnswer: A\n\n" + mt.prompt_text(item)
    assert mt.option_text(item, 0) == "Arithmetic.\n\nQuestion: 2 + 2?\nAnswer: 3"


def test_world_items_are_the_toy_study_items():
    world = kw.make_world(kw.WorldConfig(n_entities=8, n_attributes=2, n_values=5, n_options=4, seed=1))
    items = mt.world_items(world, seed=0)
    options, answers = kw.fixed_items(world, np.arange(len(world.questions)), 0)
    assert len(items) == len(world.questions)
    for item, (e, a), opts, k in zip(items, world.questions, options, answers):
        assert item.choices[item.answer] == kw.value_name(a, world.values_EA[e, a]) and item.answer == k
        assert item.question == kw.ATTRIBUTES[a][1].format(e=world.entities[e])
        assert item.choices == tuple(kw.value_name(a, int(v)) for v in opts)

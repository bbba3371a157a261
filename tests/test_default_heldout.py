"""tools/default_heldout.py: where each category's answers were lost (writer, retrieval, reader)."""

from conftest import load_tool

tool = load_tool("default_heldout")


def g(category, right, held, shown_held):
    return {"category": category, "right": right, "abstained": False, "held": held, "shown_held": shown_held}


def test_stages_split_each_category_by_what_the_memories_held_and_what_was_shown():
    graded = [g("person", True, True, True), g("person", False, True, False), g("person", False, False, False),
              g("person", True, False, False), g("counting", True, None, None), g("counting", False, None, None)]
    table = tool.stages(graded)
    assert table["person"] == {"n": 4, "right": 2, "acc_ci95": tool.wilson(2, 4), "held": 2, "shown_held": 1,
                               "right_when_shown": 1, "right_otherwise": 1}
    assert table["counting"] == {"n": 2, "right": 1, "acc_ci95": tool.wilson(1, 2)}  # no few memories decide it
    md = tool.stage_table(table).splitlines()
    assert md[2] == "| counting | 2 | 1 (50.0 %, 9.5-90.5) | - | - | - | - |"
    assert md[3] == "| person | 4 | 2 (50.0 %, 15.0-85.0) | 2 | 1 | 1 of 1 | 1 of 3 |"

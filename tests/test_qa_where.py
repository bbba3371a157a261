"""qa/where.py: the thing a "where did I leave it?" question asks after."""

from edge_agent.qa.where import left_thing


def test_the_thing_a_question_asks_where_it_was_left():
    assert left_thing("Where did I leave the blue keys?") == "blue keys"
    assert left_thing("where did i put my phone") == "phone"
    assert left_thing("Where did I last see my red cup?") == "red cup"
    assert left_thing("Where are my KEYS?") == "keys"


def test_a_place_or_time_after_the_thing_is_not_part_of_it():
    assert left_thing("Where did I leave my keys in the kitchen?") == "keys"
    assert left_thing("Where did I put the red cup this morning?") == "red cup"
    assert left_thing("where did i last see my phone yesterday") == "phone"
    assert left_thing("Where did I leave the bottle of water at lunch?") == "bottle of water"
    assert left_thing("Where did I leave the cup I used?") == "cup"
    assert left_thing("Where did I put the letter from the bank that I opened") == "letter"


def test_other_questions_ask_after_no_thing():
    for q in ("Where is the kitchen?", "What did I leave on the desk?", "Where did I leave?",
              "Where did I meet <face_1>?", "Who did I meet in the office?", ""):
        assert left_thing(q) is None, q

"""qa/who.py: the place a "who did I meet there?" question names."""

from edge_agent.qa.who import met_place


def test_the_place_a_who_did_i_meet_question_names():
    assert met_place("Who did I meet in the kitchen?") == "kitchen"
    assert met_place("Who did I meet most recently in the living room?") == "living room"
    assert met_place("who did i talk to in the office today?") == "office"
    assert met_place("Who did I last talk with in my bedroom?") == "bedroom"
    assert met_place("Who did I see at the door") == "door"


def test_other_questions_name_no_meeting_place():
    for q in ("Who did I meet?", "Where did I meet <face_1>?", "How many times did I meet <face_2>?",
              "Where did I leave my keys in the kitchen?", "What did I see in the kitchen?",
              "Who was in the kitchen?", ""):
        assert met_place(q) is None, q

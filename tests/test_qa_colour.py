"""qa/colour.py: the thing a "what colour was it?" question asks the colour of."""

from edge_agent.qa.colour import coloured_thing


def test_the_thing_a_what_colour_question_asks_about():
    assert coloured_thing("What colour was the cup I put on the shelf in the kitchen?") == "cup"
    assert coloured_thing("What colour was the bottle I picked up from the desk in the office?") == "bottle"
    assert coloured_thing("what color were my keys?") == "keys"
    assert coloured_thing("What colour is the phone on the sofa") == "phone"
    assert coloured_thing("What colour was the coffee mug that I washed?") == "coffee mug"
    assert coloured_thing("What colour was the shirt of <face_1>?") == "shirt of <face_1>"  # named by no memory
    assert coloured_thing("What colour was the book yesterday?") == "book"
    assert coloured_thing("What was the colour of the bowl I put in the sink?") == "bowl"


def test_other_questions_ask_no_colour():
    for q in ("Where did I leave the red cup?", "What colour?", "What was the colour of it?",
              "How many times did I pick up the blue phone?", "What colour was it?", ""):
        assert coloured_thing(q) is None, q

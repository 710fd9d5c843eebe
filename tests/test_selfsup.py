"""Self-supervised examples: requests made from a person's own items, with the item as the answer."""
from __future__ import annotations

from demo.core.selfsup import (CONTINUE_PROMPT, TITLE_PROMPT, TWEET_PROMPT, content_words, example_for,
                               examples_from_history, sentences)


def test_the_tweet_rule_takes_the_first_three_content_words():
    assert content_words("Be true to who you are. Be brave and wild at heart.") == ["true", "brave", "wild"]
    assert content_words("Yoooo. If the lip readers is right. 😂😂") == ["yoooo", "readers", "right"]
    request, target = example_for("I wonder what number he gonna wear  next year?", "tweet")
    assert request == TWEET_PROMPT + "wonder, number, gonna"
    assert target == "I wonder what number he gonna wear next year?"
    assert example_for("ok lol", "tweet") is None  # fewer than three content words


def test_the_continuation_rule_asks_for_the_next_two_sentences():
    text = "We went hiking. The trail was steep! At the top, a lake? Then we ate."
    assert sentences(text) == ["We went hiking.", "The trail was steep!", "At the top, a lake?", "Then we ate."]
    assert example_for(text, "continuation") == (CONTINUE_PROMPT + "We went hiking.",
                                                 "The trail was steep! At the top, a lake?")
    assert example_for("One sentence only. Two.", "continuation") is None


def test_a_paper_gives_its_title_and_auto_picks_a_rule():
    paper = {"title": "Deep Nets", "abstract": "We study  nets.\nThey work."}
    assert example_for(paper) == (TITLE_PROMPT + "We study nets. They work.", "Deep Nets")
    assert example_for({"title": "No abstract"}, "title") is None
    long = "First thing today. Second thing here. Third one now. Fourth."
    assert example_for(long)[0].startswith(CONTINUE_PROMPT)
    assert example_for("Loving these sunny mornings downtown")[0].startswith(TWEET_PROMPT)


def test_examples_keep_the_index_of_their_item():
    items = ["ok", "Coffee tastes wonderful this morning", "no", "Rainy afternoons need books"]
    made = examples_from_history(items, "tweet")
    assert [e.index for e in made] == [1, 3]
    assert [e.target for e in made] == [items[1], items[3]]
    assert len(examples_from_history(items, "tweet", limit=1)) == 1

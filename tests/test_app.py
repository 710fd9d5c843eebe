"""The running app, driven through gradio_client as an API user would."""
import pytest

from demo.app.loadtest import connect

HISTORY = ("I climbed the north ridge at dawn; the granite was still cold.\n\n"
           "Trail mix recipe: dates, almonds, dark chocolate, a pinch of salt.\n\n"
           "My boots finally gave up after 900 miles on the Pacific Crest Trail.")


@pytest.fixture(scope="module")
def client(app):
    return connect(app.local_url)


def test_named_endpoints_are_published(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/compute_profile", "/generate", "/know_me", "/list_profiles", "/delete_my_data", "/tune_profile"} <= names


def test_compute_and_generate_side_by_side(client, owner):
    profile = client.predict(history=HISTORY, owner_token=owner, name="hiker", api_name="/compute_profile")
    assert profile["n_items"] == 3
    out = client.predict(owner_token=owner, profile_id=profile["profile_id"], request="Write a tweet about my weekend.",
                         max_new_tokens=12, api_name="/generate")
    assert out["personalized"] and out["generic"]
    assert len(out["top_items"]) == 3
    assert len(out["keywords"]) == 8 and all(w.isalpha() for w in out["keywords"])  # the keyword token's words
    assert out["plug_id"]
    assert set(out["closeness"]) == {"personalized", "generic"}  # each answer's closeness to the writing
    assert all(-1 <= v <= 1 for v in out["closeness"].values())
    listed = client.predict(owner_token=owner, api_name="/list_profiles")
    assert [p["id"] for p in listed] == [profile["profile_id"]]


def test_errors_reach_the_client_as_messages(client, owner):
    with pytest.raises(Exception, match="history is empty"):
        client.predict(history=" \n\n ", owner_token=owner, name="x", api_name="/compute_profile")
    with pytest.raises(Exception, match="No such profile"):
        client.predict(owner_token=owner, profile_id="not-a-profile", request="hi", max_new_tokens=4,
                       api_name="/generate")


def test_another_token_sees_nothing_and_delete_removes_everything(client, owner):
    profile = client.predict(history=HISTORY, owner_token=owner, name="mine", api_name="/compute_profile")
    intruder = "intruder-token-0123456789abcdef"
    assert client.predict(owner_token=intruder, api_name="/list_profiles") == []
    with pytest.raises(Exception, match="No such profile"):
        client.predict(owner_token=intruder, profile_id=profile["profile_id"], request="hi", max_new_tokens=4,
                       api_name="/generate")
    counts = client.predict(owner_token=owner, api_name="/delete_my_data")
    assert counts["profiles"] >= 1
    assert client.predict(owner_token=owner, api_name="/list_profiles") == []


def test_short_owner_tokens_are_refused(client):
    with pytest.raises(Exception, match="too short owner token"):
        client.predict(history=HISTORY, owner_token="abc", name="x", api_name="/compute_profile")
    with pytest.raises(Exception, match="too short owner token"):
        client.predict(owner_token="", api_name="/list_profiles")


def test_tune_to_me_through_the_api_says_what_it_needs(client, owner):
    profile = client.predict(history=HISTORY, owner_token=owner, name="hiker", api_name="/compute_profile")
    with pytest.raises(Exception, match="at least 6 texts"):
        client.predict(owner_token=owner, profile_id=profile["profile_id"], api_name="/tune_profile")
    with pytest.raises(Exception, match="Tune to me"):
        client.predict(owner_token=owner, profile_id=profile["profile_id"], request="hi", max_new_tokens=4,
                       tuned=True, api_name="/generate")


def test_does_it_know_me_endpoint(client, owner):
    from demo.core import personas

    profile = client.predict(history=personas.persona_text("obama"), owner_token=owner, name="obama",
                             api_name="/compute_profile")
    out = client.predict(owner_token=owner, profile_id=profile["profile_id"], api_name="/know_me")
    assert out["n_items"] == 8 and out["verdict"] in ("yes", "unclear", "no") and "held back" in out["sentence"]
    assert set(out["strangers"]) <= {"FDR", "Food Blogger", "Lincoln"} and len(out["nll"]["yours"]) == 8
    assert out["relative_likelihood"]["generic"] == 100
    with pytest.raises(Exception, match="compute another profile first"):
        client.predict(owner_token=owner, profile_id=profile["profile_id"], against="profiles", api_name="/know_me")
    with pytest.raises(Exception, match="Too few texts"):
        small = client.predict(history="Hi.\n\nHello there.\n\nOk.", owner_token=owner, name="small",
                               api_name="/compute_profile")
        client.predict(owner_token=owner, profile_id=small["profile_id"], api_name="/know_me")

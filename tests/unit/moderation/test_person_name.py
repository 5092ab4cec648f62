"""Names through the spaCy English pipeline from PyPI (loaded once per process, offline) plus name cues."""

from __future__ import annotations

from services.moderation.detectors.person_name import PersonNameDetector, load_pipeline, may_hold_names


def names(text: str) -> list[str]:
    return [text[d.start : d.end] for d in PersonNameDetector().detect(text)]


def test_model_is_loaded_once_per_process() -> None:
    assert load_pipeline() is load_pipeline()
    assert "ner" in load_pipeline().pipe_names


def test_model_finds_people() -> None:
    found = names("Yesterday Maria Garcia met John Smith in Boston.")
    assert "Maria Garcia" in found and "John Smith" in found
    assert "Boston" not in found


def test_cues_find_names_the_model_misses() -> None:
    assert "Rubija" in names("My name is Rubija")
    assert "Okafor" in names("Please ask Dr. Okafor about it")
    assert "Maureen Thibault" in names(
        "Maureen Thibault\n\n41086 Kiannonkatu 98\n Suite 464"
    )  # address block
    assert "Sari J. Paavolainen" in names("Directed By:    Sari J. Paavolainen")
    assert "Liviana Palerma" in names("Producer Liviana Palerma explained the song.")  # role word trimmed


def test_the_model_runs_only_where_a_capitalised_word_may_be_a_name() -> None:
    # Only function words capitalised: nothing for the model to find, and it is not asked.
    assert not may_hold_names("How many vacation days do new employees get in their first year?")
    assert not may_hold_names("What is the refund policy? Can I get one after thirty days?")
    # A capitalised word that is more than a function word, or no capital at all (lower-case writers
    # write names in lower case too): the model is asked.
    assert may_hold_names("How many days did Maria take?")
    assert may_hold_names("follow up with patricia desrosiers in a couple of months.")
    assert names("olga krylova's killers sentenced to life in prison") == ["olga krylova"]


def test_no_names_in_plain_prose() -> None:
    assert names("The weather is nice and the report is due on Friday.") == []
    assert names("Quarterly Report\n2024 numbers are in") == []


def test_ner_is_skipped_when_the_tenant_allows_names() -> None:
    from types import MappingProxyType

    from parapet.moderation.v1 import category_pb2 as C
    from services.moderation.policy import DEFAULT_ACTIONS, DEFAULT_POLICY, Policy
    from services.moderation.screener import Screener

    screener = Screener(ner=True)
    allow = Policy(actions=MappingProxyType({**DEFAULT_ACTIONS, C.CATEGORY_PII_PERSON_NAME: C.ACTION_ALLOW}))
    assert screener.names is not None
    assert screener.names in screener.input_detectors(DEFAULT_POLICY)
    assert screener.names not in screener.input_detectors(allow)


def test_a_cued_name_ends_at_its_line() -> None:
    """A cue's name ran on over the line break into the next line's label ("Toshimi Arata\\nPhone"), so
    masking it took the label with it ("Name: <PERSON_1>: <PHONE_1>")."""
    from services.moderation.detectors.person_name import _CUES

    text = "Name: Toshimi Arata\nPhone: 0490 75 40 81"
    assert [m.group(1) for m in _CUES.finditer(text)] == ["Toshimi Arata"]
    assert "Phone" not in "".join(names(text))


def test_a_name_run_into_text_without_spaces_is_cut_at_that_text() -> None:
    """The English model's tokenizer does not split "担当はJohn Smithさんです" where the script changes, so its
    PERSON entity was the whole sentence and the prompt reached the provider as "<PERSON_1>"."""
    assert names("担当はJohn Smithさんです") == ["John Smith"]
    assert names("John Smithさんに連絡してください") == ["John Smith"]
    assert names("연락처는 John Smith입니다") == ["John Smith"]
    assert names("Producer Liviana Palerma explained the song.") == ["Liviana Palerma"]


def test_a_name_entity_holding_a_word_of_a_script_written_with_spaces_is_kept_whole() -> None:
    """A guard, passing before entities were cut at all: only text the tokenizer glues to a name (Chinese,
    Japanese, Korean, Thai...) is cut from an entity, and an Arabic word in it is a word of the name. It keeps
    out a cut at every letter outside Latin, Greek, Cyrillic and Armenian (``scripts.NON_VALUE_LETTER``), as a
    first version of the cut had it: "John محمد" was masked as "John" and the Arabic name went to the provider."""
    found = names("My colleague John محمد Smith will call.")
    assert "John محمد" in found and "Smith" in found

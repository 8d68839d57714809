"""The simulated model's memory-extraction rule."""

from typing import Any

from services.simllm.memories import memory_extraction_for, wants_memory_extraction


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_statements_about_the_user_become_memories_in_order() -> None:
    messages = [
        {"role": "system", "content": "I am the system prompt"},
        user("  I like tea  "),
        {"role": "assistant", "content": "I am the assistant"},
        user("hello there"),
        user("i'm from Lyon"),
        user("MY cat is Tom"),
        user("I am tired"),
        user("Is it raining?"),
        user("Ideas, anyone?"),  # "I" must be a word of its own
        user("I"),
        user([{"type": "text", "text": "My "}, {"type": "text", "text": "bike is red"}]),
    ]
    assert memory_extraction_for(messages) == {
        "memories": [
            "The user said: I like tea",
            "The user said: i'm from Lyon",
            "The user said: MY cat is Tom",
            "The user said: I am tired",
            "The user said: My bike is red",
        ]
    }


def test_at_most_ten_memories_and_none_for_small_talk() -> None:
    many = [user(f"I have {n} apples") for n in range(15)]
    got = memory_extraction_for(many)["memories"]
    assert got == [f"The user said: I have {n} apples" for n in range(10)]
    assert memory_extraction_for([user("hi"), user("thanks")]) == {"memories": []}
    assert memory_extraction_for([]) == {"memories": []}


def test_the_rule_is_deterministic() -> None:
    messages = [user("I like tea"), user("My dog barks")]
    assert memory_extraction_for(messages) == memory_extraction_for(list(messages))


def test_only_the_memory_extraction_schema_is_recognised() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "memory_extraction", "schema": {}}}
    assert wants_memory_extraction({"response_format": schema})
    assert not wants_memory_extraction({})
    assert not wants_memory_extraction({"response_format": None})
    assert not wants_memory_extraction({"response_format": {"type": "json_object"}})
    assert not wants_memory_extraction(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "other"}}}
    )
    assert not wants_memory_extraction({"response_format": {"type": "json_schema"}})

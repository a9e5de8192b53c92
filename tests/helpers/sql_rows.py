"""A small text-to-SQL set of the tests' own making: each prompt carries its CREATE TABLE statement, every other
one also the INSERT statements of its data, and the answer is SQL that runs on it (tests/worker/test_test_rows.py,
tests/e2e/test_e2e.py)."""

from __future__ import annotations

PEOPLE = "CREATE TABLE people (name TEXT, age INTEGER, city TEXT);"
PEOPLE_DATA = (
    "INSERT INTO people VALUES ('Ada', 36, 'London'); INSERT INTO people VALUES ('Alan', 41, 'Manchester'); "
    "INSERT INTO people VALUES ('Grace', 85, 'New York');"
)
QUESTIONS = [
    ("How old is Ada?", "SELECT age FROM people WHERE name = 'Ada'"),
    ("Who lives in London?", "SELECT name FROM people WHERE city = 'London'"),
    ("How many people are there?", "SELECT count(*) FROM people"),
    ("Who is older than 40?", "SELECT name FROM people WHERE age > 40"),
    ("What cities are there?", "SELECT city FROM people"),
    ("What is the oldest age?", "SELECT max(age) FROM people"),
]


def text_to_sql_rows(n: int, start: int = 0) -> list[dict]:
    """n prompt/completion rows cycling through QUESTIONS; rows at even positions carry the data too."""
    out = []
    for i in range(start, start + n):
        question, sql = QUESTIONS[i % len(QUESTIONS)]
        data = f"\n{PEOPLE_DATA}" if i % 2 == 0 else ""
        out.append({"prompt": f"{PEOPLE}{data}\n-- {question}\nSQL: ", "completion": sql})
    return out

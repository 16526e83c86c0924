"""The closed vocabulary of the mini world's source and math parts: word lists and sentence templates."""
from __future__ import annotations

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Rome", "Tokyo", "Dublin", "Madrid", "Berlin", "Vienna", "Quito", "Delhi")
JOBS = ("baker", "doctor", "farmer", "teacher", "pilot", "singer", "painter", "driver", "nurse", "lawyer", "tailor",
        "dentist")
PETS = ("cat", "dog", "horse", "rabbit", "parrot", "goat", "turtle", "hamster", "pony", "duck")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
VALUES = {"city": CITIES, "job": JOBS, "pet": PETS, "colour": COLOURS, "age": tuple(map(str, range(20, 70)))}
ATTRIBUTES = tuple(VALUES)
# Pre-training paraphrases, value last; [0] starts with the name (the fill-in items continue after it).
STATEMENTS = {
    "city": ("{n} lives in {v}.", "The home of {n} is in {v}.", "{n} has a house in {v}."),
    "job": ("{n} works as a {v}.", "The job of {n} is to be a {v}.", "People call {n} a good {v}."),
    "pet": ("{n} has a pet {v}.", "The pet of {n} is a {v}.", "{n} takes care of a {v}."),
    "colour": ("{n} likes the colour {v}.", "The favourite colour of {n} is {v}.", "{n} always wears {v}."),
    "age": ("{n} is {v} years old.", "The age of {n} is {v}.", "{n} turned {v} this year."),
}
QUESTIONS = {"city": "Where does {n} live?", "job": "What is the job of {n}?", "pet": "What pet does {n} have?",
             "colour": "What colour does {n} like?", "age": "How old is {n}?"}
QA_LINE = "Question: {q}\nAnswer: {v}"  # the pre-training question form = the ARC-like items + their answer
# Held-out paraphrases (seen words, unseen arrangement): the held-out source loss.
HELDOUT = {"city": "{n} has a home in {v}.", "job": "{n} is a good {v}.", "pet": "{n} has a {v}.",
           "colour": "The colour {n} likes is {v}.", "age": "{n} is now {v} years old."}
FRIENDS = "{a} and {b} are friends."
FRIEND_RATE = 0.3
MATH_NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Eva", "Dan", "Kim")
MATH_ITEMS = ("apples", "pears", "cards", "books", "stamps", "marbles", "shells", "coins", "pens", "cookies", "plums")
CONNECTORS = ("Then", "Next", "Later")
# Everyday sentences in pre-training's stories that use every word of the worked answers (gives ... away, the bags
# hold, gets, fills, So) outside a worked solution, so fine-tuning never meets a word whose embedding is untrained.
STORY_USAGE = ("{n} gives the {item} away.", "The bags hold {item}.", "{n} gets {item} too.", "{n} fills the box.")
MATH_TEST_BUCKETS = 5  # 1 in 5 value combinations (per op sequence) is reserved for math_test
ARITH_PER_DOC = 12

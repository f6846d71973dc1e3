"""Generate examples/reviews.csv: 300 product reviews for demos and tests, deterministically.

Run ``python examples/make_reviews.py``; it writes ``reviews.csv`` and ``sandbox-rules.json``
next to itself. Both are committed, so only rerun it after changing this script. Each review is assembled from fragments chosen by
its star rating (1-2 negative, 3 neutral, 4-5 positive), so the scripted sandbox answers in
``sandbox-rules.json`` agree with the rating for most rows. After writing, the script checks
that agreement and fails under 90%.

The data carries realistic awkward content on purpose: commas and quotes, a newline inside a
cell, non-ASCII text and emoji, reviews starting with ``=``, ``-``, ``+`` or ``@`` (spreadsheet
formula injection), and one empty review.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "reviews.csv"
RULES = HERE / "sandbox-rules.json"
SEED = 20240718
N_ROWS = 300
DEMO_PROMPT = (
    "Classify the sentiment of this product review as positive, negative or neutral. "
    "Answer with one word.\n\nReview: {review}"
)

# product -> (category, short noun used in the text)
PRODUCTS: dict[str, tuple[str, str]] = {
    "Stainless Steel Electric Kettle": ("kitchen", "kettle"),
    "Cast Iron Skillet 10in": ("kitchen", "skillet"),
    "Burr Coffee Grinder": ("kitchen", "grinder"),
    "Air Fryer 5.8 qt": ("kitchen", "air fryer"),
    "Chef's Knife 8-inch": ("kitchen", "knife"),
    "Crème Brûlée Torch": ("kitchen", "torch"),
    "Glass Food Storage Set": ("kitchen", "containers"),
    "Wireless Earbuds": ("electronics", "earbuds"),
    "Noise-Cancelling Headphones": ("electronics", "headphones"),
    "USB-C Charging Hub": ("electronics", "hub"),
    "Portable Bluetooth Speaker": ("electronics", "speaker"),
    "Smart Watch Series 3": ("electronics", "watch"),
    "1080p Webcam": ("electronics", "webcam"),
    "Mechanical Keyboard": ("electronics", "keyboard"),
    "Memory Foam Pillow": ("home", "pillow"),
    "LED Desk Lamp": ("home", "lamp"),
    "Robot Vacuum": ("home", "vacuum"),
    "Blackout Curtains": ("home", "curtains"),
    'Cotton Bath Towels, Set of 4 ("Hotel" line)': ("home", "towels"),
    "Aroma Diffuser": ("home", "diffuser"),
    "Yoga Mat": ("outdoor", "mat"),
    "Insulated Water Bottle 32oz": ("outdoor", "bottle"),
    "Trail Running Shoes": ("outdoor", "shoes"),
    "Camping Tent, 2-Person": ("outdoor", "tent"),
    "Adjustable Dumbbells": ("outdoor", "dumbbells"),
    "Bike Helmet": ("outdoor", "helmet"),
    "Electric Toothbrush": ("personal", "toothbrush"),
    "Ionic Hair Dryer": ("personal", "hair dryer"),
    "Vitamin C Serum": ("personal", "serum"),
    "Beard Trimmer": ("personal", "trimmer"),
    "Wooden Building Blocks": ("kids", "blocks"),
    "Board Game: Harbour Lights": ("kids", "game"),
    "Dog Harness": ("pets", "harness"),
    "Cat Scratching Post": ("pets", "scratching post"),
    "Automatic Pet Feeder": ("pets", "feeder"),
    "Ergonomic Office Chair": ("office", "chair"),
    "Fountain Pen": ("office", "pen"),
    "Monitor Arm": ("office", "monitor arm"),
}

# Sentiment words the rules key on. Positive and negative fragments never use the neutral
# markers, and the neutral fragments always contain one, because the neutral rule goes first.
NEUTRAL_MARKERS = [
    "okay",
    "average",
    "nothing special",
    "does the job",
    "mixed feelings",
    "middle of the road",
    "decent",
    "fine for the price",
    "as expected",
    "so-so",
    "meh",
    "three stars",
    "not bad, not amazing",
    "it's alright",
]
NEGATIVE_WORDS = [
    "broke",
    "broken",
    "refund",
    "disappointed",
    "disappointing",
    "returned",
    "returning",
    "waste of money",
    "stopped working",
    "terrible",
    "awful",
    "flimsy",
    "defective",
    "useless",
    "worst",
    "do not buy",
    "don't buy",
    "junk",
    "cracked",
    "fell apart",
    "not worth",
    "regret",
    "poor quality",
    "would not recommend",
    "wouldn't recommend",
    "one star",
    "feels cheap",
    "😡",
]
POSITIVE_WORDS = [
    "love",
    "loved",
    "excellent",
    "great",
    "perfect",
    "perfectly",
    "amazing",
    "fantastic",
    "highly recommend",
    "recommend it",
    "wonderful",
    "best",
    "exceeded",
    "impressed",
    "five stars",
    "happy with",
    "delighted",
    "😍",
    "👍",
]

OPENERS = {
    "positive": [
        "I love this {noun}.",
        "Excellent {noun}, exactly what I was looking for.",
        "Honestly the best {noun} I've owned.",
        "Five stars, no hesitation.",
        "Really impressed with the quality.",
        "This {noun} exceeded my expectations.",
        "Great value for money.",
        "Absolutely fantastic {noun}!",
        "Wonderful purchase, very happy with it.",
        "So happy with this {noun}.",
        "Perfect for what I needed.",
        "Delighted with this one 😍",
        "Works great, and it looks great too.",
        "Amazing {noun} for the price 👍",
        "Bought two more as gifts, that's how much I love it.",
    ],
    "negative": [
        "Very disappointed with this {noun}.",
        "It broke after two weeks.",
        "Total waste of money.",
        "Stopped working after a month of light use.",
        "Terrible {noun}, I'm returning it.",
        "Arrived cracked and the seller ignored me.",
        "Flimsy and poorly made.",
        "Do not buy this {noun}.",
        "Worst purchase I've made this year.",
        "Mine was defective out of the box.",
        "Not worth half the price.",
        "I regret buying this {noun} 😡",
        "Returned it the same day.",
        "Awful. Just awful.",
        "Feels cheap and it fell apart in days.",
    ],
    "neutral": [
        "It's okay.",
        "Average {noun}, nothing special.",
        "It does the job.",
        "Mixed feelings about this {noun}.",
        "Pretty middle of the road.",
        "Decent {noun}, fine for the price.",
        "Works as expected, no more, no less.",
        "So-so.",
        "Meh. It's a {noun}.",
        "Three stars from me.",
        "Not bad, not amazing.",
        "It's alright, I suppose.",
        "An okay {noun} if you don't expect much.",
        "Decent enough for everyday use.",
    ],
}

# Details by category and sentiment; free of the other sentiments' keywords.
ASPECTS: dict[str, dict[str, list[str]]] = {
    "kitchen": {
        "positive": [
            "It heats up fast and cleans up in seconds.",
            "Everything I've cooked with it came out perfectly.",
            "Feels solid, and the handle stays cool.",
        ],
        "negative": [
            "The coating started peeling after the third wash, which is terrible.",
            "The lid broke off the first time I used it.",
            "Useless for anything but the lightest jobs.",
        ],
        "neutral": [
            "It heats evenly, though the handle gets warm.",
            "Cleaning takes a while, the results are fine.",
        ],
    },
    "electronics": {
        "positive": [
            "Battery lasts all day and pairing was instant.",
            "The sound is crisp and the bass is wonderful.",
            "Setup took five minutes and it has worked perfectly since.",
        ],
        "negative": [
            "The battery died within a week and support offered no refund.",
            "It disconnects constantly, useless on calls.",
            "The charging port cracked after a few days.",
        ],
        "neutral": [
            "Battery life is about what the box says.",
            "Pairing works, the app is clunky.",
        ],
    },
    "home": {
        "positive": [
            "The whole room feels different now, I love it.",
            "Soft, sturdy and the colour is exactly as pictured.",
            "Quiet, easy to set up, and it looks great in the bedroom.",
        ],
        "negative": [
            "The stitching came apart in the first wash, poor quality.",
            "It is much smaller than pictured, very disappointing.",
            "The motor is loud and it stopped working after a month.",
        ],
        "neutral": [
            "The colour is a bit darker than the photos.",
            "It's smaller than I pictured, but it fits.",
        ],
    },
    "outdoor": {
        "positive": [
            "Took it on a ten-day trip and it held up perfectly.",
            "Comfortable from the first day, no break-in needed.",
            "Light, tough, and great in the rain.",
        ],
        "negative": [
            "The seam split on the second outing, total junk.",
            'The "waterproof" label is a joke, it leaked on day one.',
            "The strap broke on my first run.",
        ],
        "neutral": [
            "Runs a little small, so order a size up.",
            "It's heavier than the listing suggests.",
        ],
    },
    "personal": {
        "positive": [
            "My skin has never looked better, I'm impressed.",
            "Charges quickly and the battery lasts for weeks.",
            "Gentle, quiet and easy to hold.",
        ],
        "negative": [
            "It gave me a rash, so I'm returning it.",
            "The battery died after ten uses, awful.",
            "Pulls hair instead of cutting it, useless.",
        ],
        "neutral": [
            "Results are subtle, it takes a few weeks to see anything.",
            "It's louder than my old one.",
        ],
    },
    "kids": {
        "positive": [
            "My kids play with it every single day, best gift this year.",
            "Beautifully made, and the whole family loved it.",
            "Great for rainy afternoons.",
        ],
        "negative": [
            "Pieces were missing and the box arrived broken.",
            "The paint chipped within a day, poor quality for a toy.",
            "My daughter was bored in ten minutes, disappointing.",
        ],
        "neutral": [
            "The rules take a while to learn.",
            "Some pieces are rough around the edges.",
        ],
    },
    "pets": {
        "positive": [
            "My dog doesn't pull anymore, fantastic.",
            "The cat ignored everything else, she loves this one.",
            "Sturdy and easy to clean, highly recommend it to any pet owner.",
        ],
        "negative": [
            "The buckle broke on the second walk.",
            "My cat shredded it in a week, it fell apart.",
            "The timer is defective, it fed twice at midnight.",
        ],
        "neutral": [
            "The cat took a week to get used to it.",
            "Sizing is a little off, measure first.",
        ],
    },
    "office": {
        "positive": [
            "My back pain is gone after a month, excellent.",
            "Writes smoothly and feels wonderful in the hand.",
            "Rock solid, and it freed up half my desk. Highly recommend it.",
        ],
        "negative": [
            "The gas lift failed and it sinks every hour, terrible.",
            "It leaks ink everywhere, I want a refund.",
            "Two screws were missing and the arm droops, junk.",
        ],
        "neutral": [
            "Assembly took about an hour.",
            "It's comfortable enough for a few hours.",
        ],
    },
}

# Context sentences with no sentiment words at all.
CONTEXT = [
    "Bought it for my dad's birthday.",
    "Arrived a day early.",
    "I use it most mornings before work.",
    "Ordered the blue one.",
    "This is my second one.",
    "We've had it for about three months now.",
    "Used it mostly on weekends.",
    "Got it on sale last spring.",
    "I compared it with two other brands in the shop first.",
    "My partner uses it more than I do.",
    "Delivery took a week, packaging was plain cardboard.",
    "Bought it for our café, we run it all day.",
    "Tested it for a month before writing this.",
    "It replaced one I'd had for years.",
    "Picked it up in the Zürich store while travelling.",
]

# Hand-written rows, placed at fixed positions: awkward content and a few hard cases.
# (rating, text); the ones marked "hard" fool simple keyword rules on purpose.
SPECIALS: list[tuple[int, str]] = [
    (5, "=)) Love it, works great!"),  # starts with "=": formula injection
    (1, "- arrived broken\n- no refund offered\n- seller never replied"),  # "-" and newlines
    (4, "+1 to everything the other reviews say, excellent build."),  # starts with "+"
    (2, "@seller: the one I got was defective, please contact me."),  # starts with "@"
    (3, ""),  # empty review text
    (5, 'Really, really "good" - my wife says it\'s the best thing I\'ve bought all year 😍'),
    (1, "Update:\nIt stopped working after 40 days. Waste of money."),
    (5, "Très bien! Great quality, the whole family uses it. Grüße aus Köln 👍"),
    (4, "I was disappointed by my last brand, but this one is impressive."),  # hard: negative
    (2, "Great, another one that broke in a week."),  # sarcasm, still negative
    (5, "No complaints at all, it never broke once in a year of daily use."),  # hard: negative
    (1, "The description promised the best battery life; it lasts an hour."),  # hard: positive
    (4, "Nothing special to look at, but it's the most reliable thing in my kitchen."),  # hard
    (3, "Great design, poor battery. Evens out, I guess."),  # hard: negative
]
RATING_WEIGHTS = {5: 40, 4: 22, 3: 12, 2: 9, 1: 17}


def sentiment_of(rating: int) -> str:
    """The sentiment a rating implies: 1-2 negative, 3 neutral, 4-5 positive."""
    return "negative" if rating <= 2 else "neutral" if rating == 3 else "positive"


def style(text: str, rng: random.Random) -> str:
    """Small human touches: lower-case starts, dropped full stops, doubled exclamation marks."""
    roll = rng.random()
    if roll < 0.08:
        text = text[0].lower() + text[1:]
    elif roll < 0.14 and text.endswith("."):
        text = text[:-1]
    elif roll < 0.18 and text.endswith("!"):
        text += "!"
    return text


def make_review(rating: int, noun: str, category: str, rng: random.Random) -> str:
    """One to three sentences whose words match the rating's sentiment."""
    sentiment = sentiment_of(rating)
    parts = [rng.choice(OPENERS[sentiment]).format(noun=noun)]
    n_more = rng.choices([0, 1, 2], weights=[25, 45, 30])[0]
    extras: list[str] = []
    if n_more >= 1:
        extras.append(rng.choice(ASPECTS[category][sentiment]))
    if n_more >= 2:
        extras.append(rng.choice(CONTEXT))
    rng.shuffle(extras)
    parts.extend(extras)
    text = " ".join(parts)
    if rating == 3 and rng.random() < 0.3:
        # a three-star review often weighs a good point against a bad one
        good = rng.choice(ASPECTS[category]["positive"]).rstrip(".")
        bad = rng.choice(ASPECTS[category]["negative"])
        text += f" {good}, but {bad[0].lower()}{bad[1:]}"
    return style(text, rng)


def generate() -> list[dict[str, str]]:
    """All rows, deterministic for SEED."""
    rng = random.Random(SEED)
    products = list(PRODUCTS)
    ratings = list(RATING_WEIGHTS)
    weights = list(RATING_WEIGHTS.values())
    special_at = {int(i * N_ROWS / len(SPECIALS)) + 7: s for i, s in enumerate(SPECIALS)}
    rows = []
    for i in range(N_ROWS):
        product = rng.choice(products)
        category, noun = PRODUCTS[product]
        if i in special_at:
            rating, text = special_at[i]
        else:
            rating = rng.choices(ratings, weights=weights)[0]
            text = make_review(rating, noun, category, rng)
        rows.append(
            {
                "review_id": f"R{i + 1:04d}",
                "product": product,
                "rating_given": str(rating),
                "review": text,
            }
        )
    return rows


def write(rows: list[dict[str, str]], path: Path) -> None:
    """Write the rows as UTF-8 CSV with a header."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def phrases_pattern(phrases: list[str]) -> str:
    """A regex matching any of the phrases as whole words; straight or curly apostrophes."""
    words = [re.escape(p).replace("'", "['’]") for p in phrases if p[0].isalnum()]
    symbols = [re.escape(p) for p in phrases if not p[0].isalnum()]
    alternatives = [r"\b(?:" + "|".join(words) + r")\b", *symbols]
    return "(?:" + "|".join(alternatives) + ")" if symbols else alternatives[0]


def build_rules() -> list[dict[str, str]]:
    """The sandbox's scripted answers for the demo sentiment prompt, first match wins.

    Each rule only fires on that prompt (its text, then the review), so other prompts fall
    through to the sandbox's default answers. Neutral goes first: a three-star review often
    names a good and a bad point. Negative goes before positive, so "great, it broke" is
    negative. The last rule answers "neutral" for any other review.
    """
    prefix = r"Classify the sentiment[\s\S]*Review:[\s\S]*"
    return [
        {"pattern": prefix + phrases_pattern(NEUTRAL_MARKERS), "answer": "neutral"},
        {"pattern": prefix + phrases_pattern(NEGATIVE_WORDS), "answer": "negative"},
        {"pattern": prefix + phrases_pattern(POSITIVE_WORDS), "answer": "positive"},
        {"pattern": r"Classify the sentiment", "answer": "neutral"},
    ]


def sandbox_answer(rules: list[dict[str, str]], message: str) -> str | None:
    """What the sandbox's scripted rules answer: first match wins."""
    for rule in rules:
        if re.search(rule["pattern"], message, re.IGNORECASE):
            return rule["answer"]
    return None


def check(rows: list[dict[str, str]], rules_path: Path) -> float:
    """Share of rows where the scripted answer agrees with the rating's sentiment."""
    rules = json.loads(rules_path.read_text(encoding="utf-8"))
    agree = 0
    for row in rows:
        answer = sandbox_answer(rules, DEMO_PROMPT.format(review=row["review"]))
        expected = sentiment_of(int(row["rating_given"]))
        if answer == expected:
            agree += 1
        else:
            print(f"  {row['review_id']} {expected:>8} -> {answer}: {row['review']!r}")
    return agree / len(rows)


def main() -> int:
    """Write reviews.csv and sandbox-rules.json, then check that they agree."""
    rows = generate()
    write(rows, OUT)
    print(f"wrote {len(rows)} rows to {OUT}")
    RULES.write_text(json.dumps(build_rules(), indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {RULES}")
    share = check(rows, RULES)
    print(f"sandbox rules agree with the rating on {share:.1%} of rows")
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The native trajectory format (what `twi-curate sample-corpus` writes), one JSON object per line:

    {"id": "math-0001",                 # optional, informational
     "dataset": "twi-sample",            # optional, defaults to the file's stem
     "discipline": "mathematics",        # one of schemas.sample.DISCIPLINES, optional
     "question": "...",
     "answer": "37" | null,              # ground truth, optional
     "images": ["images/math-0001.png"], # paths relative to the JSONL file
     "turns": [{"reasoning": "...",
                "code": "python source" | null,
                "observation": {"text": "recorded stdout" | null,
                                "images": ["images/math-0001_t0_0.png"]}}],
     "final_answer": "37"}
"""

KEY_ID = "id"
KEY_DATASET = "dataset"
KEY_DISCIPLINE = "discipline"
KEY_QUESTION = "question"
KEY_ANSWER = "answer"
KEY_IMAGES = "images"
KEY_TURNS = "turns"
KEY_REASONING = "reasoning"
KEY_CODE = "code"
KEY_OBSERVATION = "observation"
KEY_OBS_TEXT = "text"
KEY_OBS_IMAGES = "images"
KEY_FINAL_ANSWER = "final_answer"

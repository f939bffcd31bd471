"""A support assistant written in DSPy, as a team would have it already."""

from __future__ import annotations

import dspy


class Triage(dspy.Signature):
    """Classify a customer message and draft a reply."""

    message: str = dspy.InputField()
    category: str = dspy.OutputField(desc="billing, shipping or other")
    reply: str = dspy.OutputField()


class SupportAssistant(dspy.Module):
    """Triages a message, then signs the drafted reply."""

    def __init__(self, signature: str = "The Support Team") -> None:
        super().__init__()
        self.signature = signature
        self.triage = dspy.ChainOfThought(Triage)

    def forward(self, message: str) -> dspy.Prediction:
        draft = self.triage(message=message)
        return dspy.Prediction(
            category=draft.category, reply=f"{draft.reply}\n-- {self.signature}"
        )

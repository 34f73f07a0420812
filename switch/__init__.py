"""The one-card transaction switch: authorizes card, QR and meter debits for campus terminals."""

__version__ = "0.1.0"

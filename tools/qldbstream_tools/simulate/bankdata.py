"""The bank's plausible (and never real) data, and the PartiQL statements it runs."""

from __future__ import annotations

import random
from decimal import Decimal

from qldbstream_tools.simulate.values import IonType, IonValue, date, symbol, timestamp_ms, typed_null

__all__ = [
    "BURST_MERCHANTS",
    "CHANNELS",
    "CITIES",
    "CURRENCIES",
    "DELETE_TRANSACTION",
    "FIRST_NAMES",
    "INSERT_ACCOUNT",
    "INSERT_CUSTOMER",
    "INSERT_TRANSACTION",
    "LAST_NAMES",
    "MERCHANTS",
    "REDACT_REVISION",
    "SELECT_BALANCE",
    "SELECT_CUSTOMER_BY_EMAIL",
    "SELECT_TWO_ACCOUNTS",
    "STREETS",
    "UPDATE_BALANCE",
    "UPDATE_BALANCE_ACTIVITY",
    "UPDATE_CUSTOMER_CONTACT",
    "address",
    "customer",
    "luhn_check_digit",
    "transaction",
]

FIRST_NAMES = (
    "Amara",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Liam",
)
LAST_NAMES = (
    "Okafor",
    "Schmidt",
    "Novak",
    "Patel",
    "Rossi",
    "Tanaka",
    "Walsh",
    "Lindqvist",
    "Moreau",
    "Silva",
)
CITIES = (("Leeds", "LS1 4AB"), ("Bristol", "BS1 5TR"), ("York", "YO1 7HH"), ("Bath", "BA1 1LT"))
STREETS = ("Harbour Lane", "Mill Road", "Castle Street", "Orchard Way", "Station Approach")
MERCHANTS = (
    ("Corner Grocer", 5411),
    ("Metro Rail", 4111),
    ("Bean There Coffee", 5814),
    ("PageTurner Books", 5942),
    ("FuelUp Station", 5541),
    ("Cloud Storage Ltd", 4816),
    ("Harbour Pharmacy", 5912),
)
BURST_MERCHANTS = (("QuickGift Cards Online", 5815), ("TopUp Games", 5816), ("Digital Vouchers", 5999))
CURRENCIES = ("GBP", "EUR", "USD")
CHANNELS = ("card_present", "online", "contactless")

SELECT_BALANCE = "SELECT a.balance, a.status FROM Accounts AS a WHERE a.accountId = ?"
INSERT_CUSTOMER = "INSERT INTO Customers ?"
INSERT_ACCOUNT = "INSERT INTO Accounts ?"
INSERT_TRANSACTION = "INSERT INTO Transactions ?"
UPDATE_BALANCE = "UPDATE Accounts AS a SET a.balance = ? WHERE a.accountId = ?"
UPDATE_BALANCE_ACTIVITY = "UPDATE Accounts AS a SET a.balance = ?, a.lastActivityAt = ? WHERE a.accountId = ?"
SELECT_CUSTOMER_BY_EMAIL = "SELECT c.customerId FROM Customers AS c WHERE c.email = ?"
SELECT_TWO_ACCOUNTS = "SELECT a.accountId, a.balance FROM Accounts AS a WHERE a.accountId IN (?, ?)"
UPDATE_CUSTOMER_CONTACT = "UPDATE Customers AS c SET c.email = ?, c.address = ? WHERE c.customerId = ?"
DELETE_TRANSACTION = "DELETE FROM Transactions AS t WHERE t.transactionId = ?"
REDACT_REVISION = "EXEC redact_revision ?, ?, ?"


def customer(rng: random.Random, customer_id: str, now_ms: int) -> dict[str, IonValue]:
    """A ``Customers`` document: PII fields (ssn, card_number, ...) and a mix of Ion types."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    digits = [4, 0, 0, 0] + [rng.randint(0, 9) for _ in range(11)]
    card = "".join(map(str, digits)) + str(luhn_check_digit(digits))
    return {
        "customerId": customer_id,
        "name": f"{first} {last}",
        "middleName": typed_null(IonType.STRING) if rng.random() < 0.6 else rng.choice(FIRST_NAMES),
        # 9xx area numbers are never issued: no real SSN can come out of the simulator.
        "ssn": f"9{rng.randint(0, 99):02d}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        "card_number": card,
        "email": f"{first}.{last}{rng.randint(1, 99)}@example.com".lower(),
        "phone": f"+44 20 7946 0{rng.randint(0, 999):03d}",
        "dateOfBirth": date(rng.randint(1945, 2004), rng.randint(1, 12), rng.randint(1, 28)),
        "address": address(rng),
        "kycVerified": rng.random() < 0.9,
        "riskScore": round(rng.random(), 2),
        "segments": [symbol(s) for s in rng.sample(("retail", "premium", "student", "business"), 2)],
        "createdAt": timestamp_ms(now_ms),
    }


def transaction(
    transaction_id: str,
    account: dict[str, IonValue],
    kind: str,
    amount: Decimal,
    merchant: tuple[str, int] | None,
    channel: IonValue,
    counterparty: str | None,
    now_ms: int,
) -> dict[str, IonValue]:
    """A ``Transactions`` document; without a merchant, ``merchant`` is ``null.string``."""
    data: dict[str, IonValue] = {
        "transactionId": transaction_id,
        "accountId": account["accountId"],
        "type": kind,
        "amount": amount,
        "currency": account["currency"],
        "merchant": typed_null(IonType.STRING) if merchant is None else merchant[0],
        "merchantCategory": typed_null(IonType.INT) if merchant is None else merchant[1],
        "channel": channel,
        "createdAt": timestamp_ms(now_ms),
    }
    if counterparty is not None:
        data["counterpartyAccountId"] = counterparty
    return data


def address(rng: random.Random) -> dict[str, IonValue]:
    """A nested ``address`` struct (fictional streets, real UK city names)."""
    city, postcode = rng.choice(CITIES)
    return {
        "street": f"{rng.randint(1, 220)} {rng.choice(STREETS)}",
        "city": city,
        "postcode": postcode,
        "country": "GB",
    }


def luhn_check_digit(digits: list[int]) -> int:
    """The Luhn check digit, so card numbers look valid (all start 4000: a test range)."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10

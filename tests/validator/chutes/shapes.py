"""Test chute: cords with rich input schemas and declared output schemas, one that lies about its output.

Hosted by tests/validator: ``tests.validator.chutes.shapes:chute``. ``/order`` validates a
nested pydantic input (the synthetic payload sampled from its schema) and answers its
declared ``Receipt``; ``/wrong`` declares ``Receipt`` but answers something else; ``/sleep``
sleeps; ``/tokens`` streams (synthetic work never picks streaming cords).
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from canopy.chute import Chute

chute = Chute(username="tests", name="shapes", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
              concurrency=8)


class Size(str, enum.Enum):
    small = "small"
    large = "large"


class Line(BaseModel):
    sku: str = Field(..., min_length=3, max_length=12)
    quantity: int = Field(..., ge=1, le=20)
    price: float = Field(..., gt=0, le=1000)
    size: Size = Size.small


class Category(BaseModel):
    name: str
    parent: "Category | None" = None


class Order(BaseModel):
    order_id: uuid.UUID
    placed_at: datetime.datetime
    deliver_on: datetime.date | None = None
    channel: Literal["web", "store", "phone"]
    lines: list[Line] = Field(..., min_length=1, max_length=4)
    notes: dict[str, str] = {}
    category: Category | None = None
    gift: bool = False
    coupon: str = Field("SAVE10", pattern=r"^[A-Z]+\d+$")


class Receipt(BaseModel):
    order_id: uuid.UUID
    items: int = Field(..., ge=1)
    total: float = Field(..., ge=0)


class SleepArgs(BaseModel):
    seconds: float = Field(1.0, ge=0, le=10)


@chute.cord()
async def order(self, args: Order) -> Receipt:
    return Receipt(order_id=args.order_id, items=sum(line.quantity for line in args.lines),
                   total=round(sum(line.quantity * line.price for line in args.lines), 2))


@chute.cord()
async def wrong(self, args: Order) -> Receipt:
    return {"order_id": "not-a-uuid", "items": 0, "total": "free"}  # type: ignore[return-value]


@chute.cord()
async def sleep(self, args: SleepArgs) -> dict:
    await asyncio.sleep(args.seconds)
    return {"slept": args.seconds}


@chute.cord(stream=True)
async def tokens(self, args: SleepArgs):
    yield "data: {}\n\n"

"""Small shared type aliases."""

import uuid

ObjectId = uuid.UUID | str  # a primary key as the ORM accepts it

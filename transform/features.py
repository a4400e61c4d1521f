"""Names and sizes of the transformed features: the contract between
`transform.preprocessing` and the trainer.

Indices are shifted by one so that 0 always means "absent or unknown": the
model masks 0 instead of learning an embedding for it.
"""
# Raw feature names (schema/schema.pbtxt).
ITEM_ID = "item_id"
USER_ID = "user_id"
QUERY = "query"
TIMESTAMP = "timestamp"
RATING = "rating"
TITLE = "title"
DESCRIPTION = "description"
ATTRIBUTES = "attributes"
IMAGE = "image"
# The user's most recent training interactions' item ids, most recent first
# (pipeline/example_gen.py), on interaction rows and on the users split.
RECENT_ITEMS = "recent_items"
# The encoders' features of the row's item text, query and photo, attached by
# the Transform's feature cache (transform/cached_executor.py), never by
# ExampleGen or a serving request; a row that has one is not encoded again.
ENCODED_ITEM_TEXT = "encoded_item_text"
ENCODED_QUERY = "encoded_query"
ENCODED_IMAGE = "encoded_image"
RAW_STRING_FEATURES = (ITEM_ID, USER_ID, QUERY, TITLE, DESCRIPTION, IMAGE)

# Vocabulary files written by the Transform analysers.
ITEM_VOCABULARY = "item_id"
USER_VOCABULARY = "user_id"
TOKEN_VOCABULARY = "text_token"
ATTRIBUTE_VOCABULARY = "attribute"

# Transformed feature names.
ITEM_INDEX = "item_index"
USER_INDEX = "user_index"
QUERY_TOKENS = "query_tokens"
ITEM_TOKENS = "item_tokens"
ATTRIBUTE_TOKENS = "attribute_tokens"
RECENT_ITEM_INDICES = "recent_item_indices"
# Frozen pretrained features, present only on rows that have the input
# (variable-length: a row without it stores nothing).
ITEM_TEXT_EMBEDDING = "item_text_embedding"
QUERY_TEXT_EMBEDDING = "query_text_embedding"
IMAGE_EMBEDDING = "image_embedding"
# Not a Transform output: 1.0 for the items that training rows name, whose id
# embedding is learned (trainer/model.py Catalog); 0.0 for the others.
ITEM_ID_LEARNED = "item_id_learned"
# When the interaction happened (UTC): sin and cos of the hour of day and of
# the day of week, so that times training never saw still map near the times
# it did. Zeros, with TIME_OF_INTERACTION + "_present" 0, on rows without a
# timestamp (catalogue, users, serving requests).
TIME_OF_INTERACTION = "time_of_interaction"
TIME_OF_INTERACTION_DIM = 4
# When the interaction happened, in seconds as given (0 on rows without a
# timestamp): not a model input; the buy-again fit finds each user's last
# visit by it (trainer/repeat_buying.py).
INTERACTION_TIMESTAMP = "interaction_timestamp"
# The interaction's rating, the rating head's label: 0, with
# RATING_LABEL + "_present" 0, on rows without one.
RATING_LABEL = "rating_label"

# An item's title and its attributes joined ("colour=red, kind=mug"), as
# written: not model inputs, but what answers show beside an item's id
# (trainer/export.py). Empty on rows that are not catalogue rows.
DISPLAY_TITLE = "display_title"
DISPLAY_ATTRIBUTES = "display_attributes"

# Words outside the vocabulary (rarer than its top k, or first seen after
# training, as a new product's brand) hash into this many extra word indices,
# so that such a word in a query still matches the same word in a title.
WORD_OOV_BUCKETS = 1000

# Fixed lengths of padded token sequences.
QUERY_LENGTH = 16
ITEM_TEXT_LENGTH = 64
ATTRIBUTES_LENGTH = 16
RECENT_ITEMS_LENGTH = 50

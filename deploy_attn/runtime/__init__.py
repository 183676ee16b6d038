"""One runner per runtime, and the table of backends."""



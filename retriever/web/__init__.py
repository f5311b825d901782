"""Web search backends (SerpAPI, Google Custom Search) behind the retrieval API's document shape."""

"""Format writers of the research exports (pairs, rankings, Hugging Face folders, SVG charts).

They take rows or records that selectors read and write bytes; nothing here touches the database.
"""

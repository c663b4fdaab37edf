"""Clean text out of inbound mail: new reply text, HTML to text and sanitized HTML, safe attachment
names and TNEF (winmail.dat) attachments. Pure functions, used by the processing stage.

Modules: ``quotes.new_text``, ``html.html_to_text`` / ``html.sanitize_html``,
``filenames.display_filename``, ``tnef.extract_tnef``.
"""

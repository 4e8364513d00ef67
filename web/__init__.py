"""The SME web UI (PRODUCT.md §6.2): server-rendered pages with htmx, bilingual (en, zh-hans)."""

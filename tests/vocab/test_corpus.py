import pytest

from medkor.vocab.corpus import CorpusError, read_documents, read_terms, split_heldout


def test_reads_jsonl_and_text(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "당뇨병은 흔하다."}\n\n{"text": "고혈압"}\n', encoding="utf-8")
    (tmp_path / "b.txt").write_text("첫 줄\n\n둘째 줄\n", encoding="utf-8")
    assert read_documents([tmp_path / "a.jsonl", tmp_path / "b.txt"]) == ["당뇨병은 흔하다.", "고혈압", "첫 줄", "둘째 줄"]


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: missing field 'text' \(fields: body\); set text_field"):
        read_documents([path])
    path.write_text('{"text": "ok"}\n{"text": 3}\n{oops\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: field 'text' is int"):
        read_documents([path])
    path.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: malformed JSON"):
        read_documents([path])
    with pytest.raises(CorpusError, match="missing.jsonl: corpus file not found"):
        read_documents([tmp_path / "missing.jsonl"])


def test_terms_and_heldout_split(tmp_path):
    (tmp_path / "t.txt").write_text("당뇨병\n당뇨병\n(급성)심근경색 폐렴\n", encoding="utf-8")
    assert read_terms([tmp_path / "t.txt"]) == ["▁당뇨병", "▁심근경색", "▁폐렴"]
    kept, held = split_heldout([str(i) for i in range(10)], every=5)
    assert held == ["4", "9"] and len(kept) == 8
    assert split_heldout(["a", "b"], every=0) == (["a", "b"], [])


def test_non_utf8_corpus_and_terms_name_file_and_line(tmp_path):
    for name, line in (("legacy.txt", "{}\n"), ("legacy.jsonl", '{{"text": "{}"}}\n')):
        path = tmp_path / name
        path.write_bytes(line.format("첫 줄").encode() + line.format("둘째 줄").encode("euc-kr"))
        with pytest.raises(CorpusError, match=rf"{name}:2: bytes that are not UTF-8 at column \d+; re-encode"):
            read_documents([path])
    terms = tmp_path / "terms.txt"
    terms.write_bytes("당뇨병\n고혈압\n".encode() + "폐렴\n".encode("cp949"))
    with pytest.raises(CorpusError, match=r"terms.txt:3: bytes that are not UTF-8"):
        read_terms([terms])


def test_crlf_text_corpus_keeps_no_carriage_return(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes("당뇨병은 흔하다.\r\n고혈압\r\n".encode())
    assert read_documents([path]) == ["당뇨병은 흔하다.", "고혈압"]

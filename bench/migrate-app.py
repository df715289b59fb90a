#!/usr/bin/env python3
"""Writes an application-shaped Liquibase changelog for bench/migrate-app: the data model of
a library system as a team would have grown it over releases, about 200 changesets in four
files and three formats:

  changelog.yaml          root: includes, tags between releases
  db/010-schema.yaml      24 tables with keys, foreign keys, indexes, remarks, guarded by
                          `not tableExists` preconditions (onFail MARK_RAN)
  db/020-reference.yaml   reference data from CSV (data/*.csv, 5,234 rows) with
                          `loadData`, each guarded by an `sqlCheck` that the table is empty
  db/030-logic.sql        formatted SQL: PL/pgSQL functions, procedures and triggers with
                          $$ bodies, views, each with --rollback and some with
                          --precondition-sql-check
  db/040-releases.xml     later releases: columns, renames, type changes, not-null,
                          backfills, sequences, views, one tag per release

usage: migrate-app.py DIR [loaddata|insert]

`insert` writes the same rows as `insert` changes instead of `loadData` (for a pgplane
without loadData), in db/020-reference-rows.xml (included before 020-reference.yaml, same
changeset ids and preconditions); everything else is identical. Output is deterministic.
"""
import csv
import json
import os
import random
import sys

out, variant = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "loaddata")
rng = random.Random(20240501)
os.makedirs(os.path.join(out, "db", "data"), exist_ok=True)


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)  # a JSON string is a YAML double-quoted scalar


def emit(v, ind=0):
    pad, lines = "  " * ind, []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, (dict, list)):
                lines.append(f"{pad}{k}:")
                lines += emit(x, ind + 1)
            else:
                lines.append(f"{pad}{k}: {scalar(x)}")
    else:
        for x in v:
            sub = emit(x, ind + 1)
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
    return lines


def write_yaml(rel, sets):
    with open(os.path.join(out, rel), "w") as f:
        f.write("\n".join(emit({"databaseChangeLog": sets})) + "\n")


def col(name, type_, **kw):
    return {"column": {"name": name, "type": type_, **kw}}


def cs(id_, changes, **kw):
    return {"changeSet": {"id": id_, "author": "library-team", **kw, "changes": changes}}


PK = {"primaryKey": True, "nullable": False}
NN = {"nullable": False}

# ---- 010-schema.yaml: tables, keys, indexes ----------------------------------------
TABLES = [
    ("country", [col("code", "char(2)", constraints=PK), col("name", "varchar(100)", constraints=NN),
                 col("region", "varchar(40)"), col("eu_member", "boolean", defaultValueBoolean=False)], []),
    ("language", [col("code", "varchar(8)", constraints=PK), col("name", "varchar(80)", constraints=NN),
                  col("native_name", "varchar(80)")], []),
    ("category", [col("id", "int", constraints=PK), col("parent_id", "int"), col("code", "varchar(20)", constraints=NN),
                  col("label", "varchar(120)", constraints=NN)], [("parent_id", "category", "id")]),
    ("library", [col("id", "bigint", autoIncrement=True, constraints=PK), col("name", "varchar(120)", constraints=NN),
                 col("country_code", "char(2)"), col("opened_on", "date")], [("country_code", "country", "code")]),
    ("branch", [col("id", "bigint", autoIncrement=True, constraints=PK), col("library_id", "bigint", constraints=NN),
                col("name", "varchar(120)", constraints=NN), col("city", "varchar(80)"),
                col("opens_at", "time"), col("closes_at", "time")], [("library_id", "library", "id")]),
    ("publisher", [col("id", "int", constraints=PK), col("name", "varchar(160)", constraints=NN),
                   col("country_code", "char(2)")], [("country_code", "country", "code")]),
    ("author", [col("id", "int", constraints=PK), col("first_name", "varchar(80)"),
                col("last_name", "varchar(80)", constraints=NN), col("born", "int"), col("country_code", "char(2)")],
     [("country_code", "country", "code")]),
    ("book", [col("id", "int", constraints=PK), col("isbn", "varchar(17)", constraints={"nullable": False, "unique": True}),
              col("title", "varchar(300)", constraints=NN), col("publisher_id", "int"), col("language_code", "varchar(8)"),
              col("category_id", "int"), col("published", "int"), col("pages", "int"),
              col("price", "numeric(8,2)")],
     [("publisher_id", "publisher", "id"), ("language_code", "language", "code"), ("category_id", "category", "id")]),
    ("book_author", [col("book_id", "int", constraints=PK), col("author_id", "int", constraints=PK),
                     col("position", "smallint", defaultValueNumeric=1)],
     [("book_id", "book", "id"), ("author_id", "author", "id")]),
    ("member", [col("id", "bigint", autoIncrement=True, constraints=PK), col("card_no", "varchar(20)", constraints={"nullable": False, "unique": True}),
                col("name", "varchar(160)", constraints=NN), col("email", "varchar(254)"),
                col("joined_on", "date", defaultValueComputed="CURRENT_DATE"), col("home_branch_id", "bigint")],
     [("home_branch_id", "branch", "id")]),
    ("member_address", [col("member_id", "bigint", constraints=PK), col("line1", "varchar(200)"), col("line2", "varchar(200)"),
                        col("postcode", "varchar(16)"), col("city", "varchar(80)"), col("country_code", "char(2)")],
     [("member_id", "member", "id"), ("country_code", "country", "code")]),
    ("copy", [col("id", "bigint", autoIncrement=True, constraints=PK), col("book_id", "int", constraints=NN),
              col("branch_id", "bigint", constraints=NN), col("barcode", "varchar(24)", constraints={"nullable": False, "unique": True}),
              col("acquired_on", "date"), col("condition", "varchar(12)", defaultValue="good")],
     [("book_id", "book", "id"), ("branch_id", "branch", "id")]),
    ("loan", [col("id", "bigint", autoIncrement=True, constraints=PK), col("copy_id", "bigint", constraints=NN),
              col("member_id", "bigint", constraints=NN), col("lent_at", "timestamp", defaultValueComputed="now()"),
              col("due_on", "date", constraints=NN), col("returned_at", "timestamp")],
     [("copy_id", "copy", "id"), ("member_id", "member", "id")]),
    ("reservation", [col("id", "bigint", autoIncrement=True, constraints=PK), col("book_id", "int", constraints=NN),
                     col("member_id", "bigint", constraints=NN), col("placed_at", "timestamp", defaultValueComputed="now()"),
                     col("status", "varchar(12)", defaultValue="waiting")],
     [("book_id", "book", "id"), ("member_id", "member", "id")]),
    ("fine", [col("id", "bigint", autoIncrement=True, constraints=PK), col("loan_id", "bigint", constraints=NN),
              col("amount", "numeric(8,2)", constraints=NN), col("paid", "boolean", defaultValueBoolean=False)],
     [("loan_id", "loan", "id")]),
    ("payment", [col("id", "bigint", autoIncrement=True, constraints=PK), col("member_id", "bigint", constraints=NN),
                 col("amount", "numeric(8,2)", constraints=NN), col("paid_at", "timestamp", defaultValueComputed="now()"),
                 col("method", "varchar(16)")], [("member_id", "member", "id")]),
    ("staff", [col("id", "int", constraints=PK), col("branch_id", "bigint"), col("name", "varchar(160)", constraints=NN),
               col("role", "varchar(40)")], [("branch_id", "branch", "id")]),
    ("shift", [col("id", "bigint", autoIncrement=True, constraints=PK), col("staff_id", "int", constraints=NN),
               col("starts_at", "timestamp", constraints=NN), col("ends_at", "timestamp", constraints=NN)],
     [("staff_id", "staff", "id")]),
    ("event", [col("id", "bigint", autoIncrement=True, constraints=PK), col("branch_id", "bigint", constraints=NN),
               col("title", "varchar(200)", constraints=NN), col("starts_at", "timestamp"), col("seats", "int")],
     [("branch_id", "branch", "id")]),
    ("event_signup", [col("event_id", "bigint", constraints=PK), col("member_id", "bigint", constraints=PK),
                      col("signed_up_at", "timestamp", defaultValueComputed="now()")],
     [("event_id", "event", "id"), ("member_id", "member", "id")]),
    ("notification", [col("id", "bigint", autoIncrement=True, constraints=PK), col("member_id", "bigint", constraints=NN),
                      col("kind", "varchar(20)", constraints=NN), col("body", "text"), col("sent_at", "timestamp")],
     [("member_id", "member", "id")]),
    ("audit_log", [col("id", "bigint", autoIncrement=True, constraints=PK), col("table_name", "varchar(63)", constraints=NN),
                   col("row_id", "bigint"), col("action", "varchar(8)", constraints=NN),
                   col("at", "timestamp", defaultValueComputed="now()"), col("who", "varchar(63)")], []),
    ("setting", [col("key", "varchar(80)", constraints=PK), col("value", "text")], []),
    ("holiday", [col("day", "date", constraints=PK), col("country_code", "char(2)", constraints=PK),
                 col("name", "varchar(120)")], [("country_code", "country", "code")]),
]
INDEXES = {
    "book": [["title"], ["publisher_id"], ["category_id"], ["language_code"]],
    "author": [["last_name", "first_name"]],
    "copy": [["book_id"], ["branch_id"]],
    "loan": [["member_id"], ["copy_id"], ["due_on"]],
    "reservation": [["book_id", "status"]],
    "member": [["email"], ["home_branch_id"]],
    "notification": [["member_id", "sent_at"]],
    "audit_log": [["table_name", "row_id"]],
    "category": [["parent_id"]],
}

schema = []
for name, cols, fks in TABLES:
    schema.append(cs(f"{name}-table", [{"createTable": {"tableName": name, "remarks": f"{name.replace('_', ' ')} records", "columns": cols}}],
                     preConditions=[{"onFail": "MARK_RAN"}, {"not": [{"tableExists": {"tableName": name}}]}]))
for name, cols, fks in TABLES:
    changes = [{"addForeignKeyConstraint": {"baseTableName": name, "baseColumnNames": c, "constraintName": f"fk_{name}_{c}",
                                            "referencedTableName": t, "referencedColumnNames": r}} for c, t, r in fks]
    if changes:
        schema.append(cs(f"{name}-fks", changes))
    for cols_ in INDEXES.get(name, []):
        schema.append(cs(f"{name}-ix-{'-'.join(cols_)}", [{"createIndex": {
            "tableName": name, "indexName": f"ix_{name}_{'_'.join(cols_)}",
            "columns": [{"column": {"name": c}} for c in cols_]}}]))
write_yaml("db/010-schema.yaml", schema)

# ---- 020-reference.yaml: CSV reference data -------------------------------------------
REGIONS = ["Europe", "Asia", "Africa", "Americas", "Oceania"]
WORDS = ("river stone light garden winter harbour shadow letter island mountain silver city night "
         "glass salt paper forest voice bridge road summer storm house queen north orchard "
         "clock lantern mirror empire ocean tower valley").split()


def title():
    n = rng.randint(1, 5)
    t = " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()
    # Quotes, commas and apostrophes, as real titles have.
    return rng.choice([t, f"{t}, vol. {rng.randint(1, 9)}", f"The {t.lower()}", f"{t}'s \"end\""])


countries = []
for i in range(250):
    code = chr(65 + i // 26) + chr(65 + i % 26)
    countries.append([code, f"Country {code}", rng.choice(REGIONS) if i % 17 else "", "true" if i % 7 == 0 else "false"])
languages = [[f"l{i:03d}", f"Language {i}", rng.choice(["", f"Lingua {i}"])] for i in range(184)]
categories = [[str(i), str((i - 1) // 10) if i > 10 else "", f"C{i:04d}", f"Category {i}: {rng.choice(WORDS)}"] for i in range(1, 501)]
publishers = [[str(i), f"{rng.choice(WORDS).capitalize()} {rng.choice(['Press', 'Books', 'Verlag', 'Editions'])} {i}",
               countries[rng.randrange(250)][0]] for i in range(1, 301)]
authors = [[str(i), rng.choice(["", "Ann", "Bo", "Chloé", "Dmitri", "Eve", "Farid"]), f"Surname{i}",
            str(rng.randint(1800, 2000)) if i % 5 else "", countries[rng.randrange(250)][0]] for i in range(1, 1501)]
books = [[str(i), f"978-{i:010d}", title(), str(rng.randint(1, 300)), languages[rng.randrange(184)][0],
          str(rng.randint(1, 500)), str(rng.randint(1900, 2024)), str(rng.randint(40, 1200)),
          f"{rng.randint(3, 90)}.{rng.randint(0, 99):02d}" if i % 9 else ""] for i in range(1, 2501)]
DATA = [
    ("country", ["code", "name", "region", "eu_member"], ["STRING", "STRING", "STRING", "BOOLEAN"], countries),
    ("language", ["code", "name", "native_name"], ["STRING", "STRING", "STRING"], languages),
    ("category", ["id", "parent_id", "code", "label"], ["NUMERIC", "NUMERIC", "STRING", "STRING"], categories),
    ("publisher", ["id", "name", "country_code"], ["NUMERIC", "STRING", "STRING"], publishers),
    ("author", ["id", "first_name", "last_name", "born", "country_code"], ["NUMERIC", "STRING", "STRING", "NUMERIC", "STRING"], authors),
    ("book", ["id", "isbn", "title", "publisher_id", "language_code", "category_id", "published", "pages", "price"],
     ["NUMERIC", "STRING", "STRING", "NUMERIC", "STRING", "NUMERIC", "NUMERIC", "NUMERIC", "NUMERIC"], books),
]

def xml_attr(v):
    return v.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


reference = []
xml_inserts = []
for table, header, types, rows in DATA:
    with open(os.path.join(out, "db", "data", f"{table}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    guard = [{"onFail": "MARK_RAN"}, {"sqlCheck": {"expectedResult": "0", "sql": f"SELECT count(*) FROM {table}"}}]
    if variant == "loaddata":
        changes = [{"loadData": {"tableName": table, "file": f"data/{table}.csv", "relativeToChangelogFile": True,
                                 "columns": [{"column": {"name": h, "type": t}} for h, t in zip(header, types)]}}]
    else:
        # The rows as insert changes, in XML (as projects that predate loadData keep them).
        attr = {"STRING": "value", "NUMERIC": "valueNumeric", "BOOLEAN": "valueBoolean"}
        inserts = "\n".join(
            f'        <insert tableName="{table}">'
            + "".join(f'<column name="{h}" {attr[t]}="{xml_attr(v)}"/>' if v != "" else f'<column name="{h}"/>'
                      for h, t, v in zip(header, types, row))
            + "</insert>" for row in rows)
        xml_inserts.append(f'    <changeSet id="{table}-data" author="library-team">\n'
                           f'        <preConditions onFail="MARK_RAN"><sqlCheck expectedResult="0">SELECT count(*) FROM {table}'
                           f'</sqlCheck></preConditions>\n{inserts}\n    </changeSet>')
        continue
    reference.append(cs(f"{table}-data", changes, preConditions=guard))
reference.append(cs("settings", [{"insert": {"tableName": "setting", "columns": [
    {"column": {"name": "key", "value": k}}, {"column": {"name": "value", "value": v}}]}}
    for k, v in [("loan.days", "21"), ("loan.max", "12"), ("fine.per_day", "0.25"), ("reservation.hold_days", "5"),
                 ("site.name", "City Library"), ("site.motto", "Read, it's free")]]))
write_yaml("db/020-reference.yaml", reference)
XML_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog"\n'
            '    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
            '    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog '
            'http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.28.xsd">\n')
if xml_inserts:
    with open(os.path.join(out, "db", "020-reference-rows.xml"), "w") as f:
        f.write(XML_HEAD + "\n".join(xml_inserts) + "\n</databaseChangeLog>\n")

# ---- 030-logic.sql: functions, procedures, triggers ---------------------------------
logic = ["--liquibase formatted sql", ""]


def fsql(id_, body, rollback, check=None, split=False):
    attrs = "" if split else " splitStatements:false"
    logic.append(f"--changeset library-team:{id_}{attrs}")
    if check:
        logic.append("--preconditions onFail:MARK_RAN")
        logic.append(f"--precondition-sql-check expectedResult:0 {check}")
    logic.append(body.strip())
    for line in rollback:
        logic.append(f"--rollback {line}")
    logic.append("")


fsql("fn-touch", """
CREATE FUNCTION touch_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit_log (table_name, row_id, action, who)
  VALUES (TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, TG_OP, current_user);
  RETURN COALESCE(NEW, OLD);
END
$$;""", ["DROP FUNCTION touch_audit();"], "SELECT count(*) FROM pg_proc WHERE proname = 'touch_audit'")
for t in ["loan", "reservation", "fine", "payment", "member", "copy", "event", "notification"]:
    fsql(f"trg-{t}", f"CREATE TRIGGER {t}_audit AFTER INSERT OR UPDATE OR DELETE ON {t} "
                     f"FOR EACH ROW EXECUTE FUNCTION touch_audit();",
         [f"DROP TRIGGER {t}_audit ON {t};"], split=True)
fsql("fn-due", """
CREATE FUNCTION due_date(lent date, days int DEFAULT 21) RETURNS date LANGUAGE sql IMMUTABLE AS $$
  SELECT lent + days
$$;""", ["DROP FUNCTION due_date(date, int);"])
fsql("fn-fine", """
CREATE FUNCTION fine_for(p_loan bigint) RETURNS numeric LANGUAGE plpgsql STABLE AS $$
DECLARE
  overdue int;
BEGIN
  SELECT GREATEST(0, COALESCE(returned_at::date, CURRENT_DATE) - due_on) INTO overdue FROM loan WHERE id = p_loan;
  RETURN round(COALESCE(overdue, 0) * (SELECT value::numeric FROM setting WHERE key = 'fine.per_day'), 2);
END
$$;""", ["DROP FUNCTION fine_for(bigint);"], "SELECT count(*) FROM pg_proc WHERE proname = 'fine_for'")
fsql("proc-return", """
CREATE PROCEDURE return_copy(p_copy bigint) LANGUAGE plpgsql AS $$
DECLARE
  l bigint;
BEGIN
  UPDATE loan SET returned_at = now() WHERE copy_id = p_copy AND returned_at IS NULL RETURNING id INTO l;
  IF l IS NOT NULL AND fine_for(l) > 0 THEN
    INSERT INTO fine (loan_id, amount) VALUES (l, fine_for(l));
  END IF;
END
$$;""", ["DROP PROCEDURE return_copy(bigint);"])
fsql("proc-lend", """
CREATE PROCEDURE lend(p_copy bigint, p_member bigint) LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT count(*) FROM loan WHERE member_id = p_member AND returned_at IS NULL)
     >= (SELECT value::int FROM setting WHERE key = 'loan.max') THEN
    RAISE EXCEPTION 'member % has too many loans', p_member;
  END IF;
  INSERT INTO loan (copy_id, member_id, due_on)
  VALUES (p_copy, p_member, due_date(CURRENT_DATE, (SELECT value::int FROM setting WHERE key = 'loan.days')));
END
$$;""", ["DROP PROCEDURE lend(bigint, bigint);"])
for i, (name, sql) in enumerate([
    ("v_available", "SELECT c.id, c.barcode, b.title, c.branch_id FROM copy c JOIN book b ON b.id = c.book_id "
                    "WHERE NOT EXISTS (SELECT 1 FROM loan l WHERE l.copy_id = c.id AND l.returned_at IS NULL)"),
    ("v_overdue", "SELECT l.id, l.member_id, l.due_on, fine_for(l.id) AS fine FROM loan l "
                  "WHERE l.returned_at IS NULL AND l.due_on < CURRENT_DATE"),
    ("v_catalogue", "SELECT b.id, b.isbn, b.title, string_agg(a.last_name, ', ' ORDER BY ba.position) AS authors "
                    "FROM book b LEFT JOIN book_author ba ON ba.book_id = b.id LEFT JOIN author a ON a.id = ba.author_id "
                    "GROUP BY b.id"),
    ("v_category_tree", "WITH RECURSIVE t AS (SELECT id, parent_id, label, 1 AS depth FROM category WHERE parent_id IS NULL "
                        "UNION ALL SELECT c.id, c.parent_id, c.label, t.depth + 1 FROM category c JOIN t ON c.parent_id = t.id) "
                        "SELECT * FROM t"),
]):
    fsql(f"view-{name}", f"CREATE VIEW {name} AS {sql};", [f"DROP VIEW {name};"], split=True)
for i in range(12):
    fsql(f"fn-stat-{i}", f"""
-- statistics {i}: a semicolon; inside a comment and 'a string; too'
CREATE FUNCTION stat_{i}(p_branch bigint) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
  n bigint;
BEGIN
  SELECT count(*) INTO n FROM copy WHERE branch_id = p_branch AND id % {i + 2} = 0;
  RETURN n;
END
$$;""", [f"DROP FUNCTION stat_{i}(bigint);"], f"SELECT count(*) FROM pg_proc WHERE proname = 'stat_{i}'" if i % 3 == 0 else None)
with open(os.path.join(out, "db", "030-logic.sql"), "w") as f:
    f.write("\n".join(logic) + "\n")

# ---- 040-releases.xml: later releases -------------------------------------------------
x = []


def xcs(id_, body, pre=None):
    p = f"\n        <preConditions onFail=\"MARK_RAN\">{pre}</preConditions>" if pre else ""
    x.append(f'    <changeSet id="{id_}" author="library-team">{p}\n        {body}\n    </changeSet>')


for r in range(1, 10):
    t = ["book", "member", "loan", "copy", "event", "author", "publisher", "branch", "payment"][r - 1]
    xcs(f"r{r}-col", f'<addColumn tableName="{t}"><column name="rev{r}_note" type="varchar(200)"/>'
                     f'<column name="rev{r}_flag" type="boolean" defaultValueBoolean="false"/></addColumn>',
        pre=f'<not><columnExists tableName="{t}" columnName="rev{r}_note"/></not>')
    xcs(f"r{r}-backfill", f'<update tableName="{t}"><column name="rev{r}_note" value="migrated in release {r}"/>'
                          f'<where>rev{r}_note IS NULL</where></update>')
    xcs(f"r{r}-notnull", f'<addNotNullConstraint tableName="{t}" columnName="rev{r}_note" columnDataType="varchar(200)"/>')
    xcs(f"r{r}-widen", f'<modifyDataType tableName="{t}" columnName="rev{r}_note" newDataType="varchar(400)"/>')
    xcs(f"r{r}-rename", f'<renameColumn tableName="{t}" oldColumnName="rev{r}_flag" newColumnName="rev{r}_active" columnDataType="boolean"/>')
    xcs(f"r{r}-seq", f'<createSequence sequenceName="seq_rev{r}" startValue="{r * 1000}" incrementBy="1"/>')
    xcs(f"r{r}-remark", f'<setColumnRemarks tableName="{t}" columnName="rev{r}_note" remarks="release {r} note"/>')
    xcs(f"r{r}-ix", f'<createIndex tableName="{t}" indexName="ix_{t}_rev{r}"><column name="rev{r}_active"/></createIndex>')
    xcs(f"r{r}-view", f'<createView viewName="v_{t}_rev{r}" replaceIfExists="true">SELECT id, rev{r}_note FROM {t} WHERE rev{r}_active</createView>')
    xcs(f"r{r}-setting", f'<insert tableName="setting"><column name="key" value="release.{r}"/>'
                         f'<column name="value" value="2.{r}"/></insert>')
    x.append(f'    <changeSet id="release-{r}" author="library-team">\n        <tagDatabase tag="v2.{r}"/>\n    </changeSet>')
xcs("book-search", '<sql>CREATE INDEX ix_book_title_lower ON book (lower(title))</sql>\n        <rollback>DROP INDEX ix_book_title_lower</rollback>')
xcs("member-email-uq", '<addUniqueConstraint tableName="member" columnNames="email" constraintName="uq_member_email"/>')
xcs("loan-default", '<addDefaultValue tableName="loan" columnName="due_on" defaultValueComputed="CURRENT_DATE + 21"/>')
with open(os.path.join(out, "db", "040-releases.xml"), "w") as f:
    f.write(XML_HEAD + "\n".join(x) + "\n</databaseChangeLog>\n")

# ---- the root ---------------------------------------------------------------------------
root = [
    {"include": {"file": "db/010-schema.yaml", "relativeToChangelogFile": True}},
    cs("release-1.0", [{"tagDatabase": {"tag": "v1.0"}}]),
    *([{"include": {"file": "db/020-reference-rows.xml", "relativeToChangelogFile": True}}] if variant == "insert" else []),
    {"include": {"file": "db/020-reference.yaml", "relativeToChangelogFile": True}},
    {"include": {"file": "db/030-logic.sql", "relativeToChangelogFile": True}},
    cs("release-2.0", [{"tagDatabase": {"tag": "v2.0"}}]),
    {"include": {"file": "db/040-releases.xml", "relativeToChangelogFile": True}},
]
write_yaml("changelog.yaml", root)
print(sum(len(r) for _, _, _, r in DATA))

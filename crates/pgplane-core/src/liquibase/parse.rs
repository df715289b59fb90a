//! Loading XML/YAML/JSON changelogs (includes, properties) into changesets, with the
//! checksum computed from the same attributes Liquibase serialises.

use std::collections::HashSet;

use super::checksum::{self, SVal};
use super::node::{self, Node};
use super::{
    expr, formatted, Change, ChangeSet, Changelog, ChangelogError, Column, Condition, Constraints, Loader, Name,
    OnFail, Preconditions, Rollback, SqlChange, Value,
};

/// Loads `changelog` (a path relative to the loader's search path, like Liquibase's
/// `--changelog-file`) and every file it includes.
pub fn load(changelog: &str, loader: &dyn Loader) -> Result<Changelog, ChangelogError> {
    let mut ctx =
        Ctx { loader, properties: Vec::new(), changesets: Vec::new(), seen: HashSet::new(), stack: Vec::new() };
    ctx.file(&normalize(changelog), None, true)?;
    Ok(Changelog { changesets: ctx.changesets })
}

pub(crate) struct Ctx<'a> {
    loader: &'a dyn Loader,
    /// Changelog properties; the first definition wins, like Liquibase's.
    pub properties: Vec<(String, String)>,
    changesets: Vec<ChangeSet>,
    seen: HashSet<String>,
    stack: Vec<String>,
}

pub(crate) fn normalize(path: &str) -> String {
    let p = path.replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn join(dir: &str, rel: &str) -> String {
    normalize(&if dir.is_empty() { rel.to_string() } else { format!("{dir}/{rel}") })
}

impl Ctx<'_> {
    pub fn expand(&self, s: &str) -> String {
        if !s.contains("${") {
            return s.to_string();
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            match rest[i + 2..].find('}') {
                Some(j) => {
                    let name = &rest[i + 2..i + 2 + j];
                    match self.properties.iter().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&rest[i..i + 3 + j]),
                    }
                    rest = &rest[i + 3 + j..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    pub fn set_property(&mut self, name: &str, value: &str) {
        if !self.properties.iter().any(|(k, _)| k == name) {
            self.properties.push((name.to_string(), value.to_string()));
        }
    }

    pub fn read(&self, path: &str, from: &str, line: Option<usize>) -> Result<String, ChangelogError> {
        self.loader.read(path).map_err(|e| {
            ChangelogError::new(from, line, format!("cannot read {path}: {e}; paths are relative to the search path"))
        })
    }

    /// Parses one changelog file. `required`: an include (error on an unknown type) rather
    /// than an includeAll member (skipped, like Liquibase's warning).
    fn file(&mut self, path: &str, from: Option<(&str, Option<usize>)>, required: bool) -> Result<(), ChangelogError> {
        let lower = path.to_ascii_lowercase();
        let kind = ["xml", "yaml", "yml", "json", "sql"].into_iter().find(|e| lower.ends_with(&format!(".{e}")));
        let Some(kind) = kind else {
            if required {
                let (f, l) = from.unwrap_or((path, None));
                return Err(ChangelogError::new(
                    f,
                    l,
                    format!("{path} is not a changelog: use a .xml, .yaml, .yml, .json or .sql file"),
                ));
            }
            return Ok(());
        };
        if self.stack.iter().any(|p| p == path) {
            let (f, l) = from.unwrap_or((path, None));
            return Err(ChangelogError::new(f, l, format!("{path} includes itself (via {})", self.stack.join(" -> "))));
        }
        let src = match from {
            Some((f, l)) => self.read(path, f, l)?,
            None => self.loader.read(path).map_err(|e| {
                ChangelogError::new(
                    path,
                    None,
                    format!("cannot read the changelog: {e}; the path is relative to the search path"),
                )
            })?,
        };
        self.stack.push(path.to_string());
        let r = match kind {
            "sql" => {
                formatted::parse(self, path, &src).and_then(|sets| sets.into_iter().try_for_each(|cs| self.push(cs)))
            }
            "xml" => node::from_xml(path, &src).and_then(|n| self.changelog(path, &src, n)),
            k => node::from_yaml(path, &src, k == "json").and_then(|n| self.changelog(path, &src, n)),
        };
        self.stack.pop();
        r
    }

    /// The changesets loaded so far.
    pub(crate) fn changesets(&self) -> &[ChangeSet] {
        &self.changesets
    }

    pub(crate) fn push(&mut self, cs: ChangeSet) -> Result<(), ChangelogError> {
        let key = format!("{}::{}::{}", cs.filename, cs.id, cs.author);
        if !self.seen.insert(key) {
            return Err(ChangelogError::new(
                &cs.location.file,
                Some(cs.location.line),
                format!(
                    "changeset {}::{} appears twice in {}; give one of them another id",
                    cs.id, cs.author, cs.filename
                ),
            ));
        }
        self.changesets.push(cs);
        Ok(())
    }

    fn changelog(&mut self, path: &str, src: &str, mut root: Node) -> Result<(), ChangelogError> {
        if root.name != "databaseChangeLog" {
            return Err(ChangelogError::new(
                path,
                root.line,
                format!("the root element is {}, expected databaseChangeLog", root.name),
            ));
        }
        // Properties of this file first, then expand ${…} everywhere in it.
        for c in &root.children {
            if c.name == "property" {
                self.property(path, c)?;
            }
        }
        let props = self.properties.clone();
        let expander = Ctx {
            loader: self.loader,
            properties: props,
            changesets: Vec::new(),
            seen: HashSet::new(),
            stack: Vec::new(),
        };
        root.map_strings(&|s| expander.expand(s));
        let logical = root.get("logicalFilePath");
        for (k, _) in &root.attrs {
            if k != "logicalFilePath" && k != "objectQuotingStrategy" {
                return Err(ChangelogError::new(
                    path,
                    root.line,
                    format!("databaseChangeLog attribute {k} is not supported; remove it"),
                ));
            }
        }
        if root.get("objectQuotingStrategy").is_some_and(|q| q != "LEGACY") {
            return Err(ChangelogError::new(
                path,
                root.line,
                "only objectQuotingStrategy LEGACY (the default) is supported",
            ));
        }
        let filename = logical.clone().unwrap_or_else(|| path.to_string());
        let mut finder = LineFinder { src, from: 0 };
        for c in &root.children {
            match c.name.as_str() {
                "property" => {}
                "changeSet" => {
                    let line = c.line.or_else(|| c.get("id").and_then(|id| finder.find(&id)));
                    let cs = self.changeset(path, &filename, c, line.unwrap_or(1))?;
                    self.push(cs)?;
                }
                "include" => {
                    let line = c.line.or_else(|| c.get("file").and_then(|f| finder.find(&f)));
                    check_attrs(c, &["file", "relativeToChangelogFile"], path, line, "include")?;
                    let Some(file) = c.get("file") else {
                        return Err(ChangelogError::new(path, line, "include needs a file attribute"));
                    };
                    let target = if bool_attr(c, "relativeToChangelogFile", path, line)?.unwrap_or(false) {
                        join(parent(path), &file)
                    } else {
                        normalize(&file)
                    };
                    self.file(&target, Some((path, line)), true)?;
                }
                "includeAll" => {
                    let line = c.line.or_else(|| c.get("path").and_then(|f| finder.find(&f)));
                    check_attrs(c, &["path", "relativeToChangelogFile", "errorIfMissingOrEmpty"], path, line, "includeAll")?;
                    let Some(dir) = c.get("path") else {
                        return Err(ChangelogError::new(path, line, "includeAll needs a path attribute"));
                    };
                    let dir = if bool_attr(c, "relativeToChangelogFile", path, line)?.unwrap_or(false) {
                        join(parent(path), &dir)
                    } else {
                        normalize(&dir)
                    };
                    let mut files = self.loader.list(&dir).map_err(|e| {
                        ChangelogError::new(path, line, format!("cannot list includeAll path {dir}: {e}"))
                    })?;
                    files.sort();
                    let error_if_empty = bool_attr(c, "errorIfMissingOrEmpty", path, line)?.unwrap_or(true);
                    if files.is_empty() && error_if_empty {
                        return Err(ChangelogError::new(
                            path,
                            line,
                            format!("includeAll path {dir} holds no files; add changelogs or set errorIfMissingOrEmpty: false"),
                        ));
                    }
                    for f in files {
                        let f = normalize(&f);
                        if f != path {
                            self.file(&f, Some((path, line)), false)?;
                        }
                    }
                }
                other => {
                    return Err(ChangelogError::new(
                        path,
                        c.line,
                        format!("{other} is not supported at the top of a changelog; use changeSet, include, includeAll or property"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn property(&mut self, path: &str, c: &Node) -> Result<(), ChangelogError> {
        check_attrs(c, &["name", "value", "dbms", "context", "labels", "global"], path, c.line, "property")?;
        let (Some(name), Some(value)) = (c.get("name"), c.get("value")) else {
            return Err(ChangelogError::new(
                path,
                c.line,
                "property needs name and value (property files are not supported)",
            ));
        };
        if expr::dbms_match(c.get("dbms").as_deref(), "postgresql") {
            let v = self.expand(&value);
            self.set_property(&name, &v);
        }
        Ok(())
    }

    fn changeset(&mut self, path: &str, filename: &str, n: &Node, line: usize) -> Result<ChangeSet, ChangelogError> {
        let err = |msg: String| ChangelogError::new(path, Some(line), msg);
        let id = n.get("id").ok_or_else(|| err("changeSet needs an id".into()))?;
        let author = n.get("author").ok_or_else(|| err(format!("changeSet {id} needs an author")))?;
        let who = format!("changeset {id} (author {author})");
        for (k, _) in &n.attrs {
            let known = [
                "id",
                "author",
                "runAlways",
                "runOnChange",
                "failOnError",
                "runInTransaction",
                "context",
                "contextFilter",
                "labels",
                "dbms",
                "logicalFilePath",
                "created",
                "comment",
                "validCheckSum",
                "rollback",
            ];
            if !known.contains(&k.as_str()) {
                return Err(err(format!("{who}: attribute {k} is not supported; remove it")));
            }
        }
        let b = |k: &str, d: bool| bool_attr(n, k, path, Some(line)).map(|v| v.unwrap_or(d));
        let mut cs = ChangeSet {
            filename: n.get("logicalFilePath").unwrap_or_else(|| filename.to_string()),
            valid_checksums: n.get_all("validCheckSum").into_iter().map(|s| s.trim().to_string()).collect(),
            contexts: n.get("contextFilter").or_else(|| n.get("context")),
            labels: n.get("labels"),
            dbms: n.get("dbms"),
            run_always: b("runAlways", false)?,
            run_on_change: b("runOnChange", false)?,
            fail_on_error: b("failOnError", true)?,
            run_in_transaction: b("runInTransaction", true)?,
            comment: n.get("comment").map(|c| c.trim().to_string()),
            ..ChangeSet::new(id, author, path, line)
        };
        let mut sums = Vec::new();
        for c in n.flat_children("changes") {
            let cline = c.line.unwrap_or(line);
            match c.name.as_str() {
                "comment" | "validCheckSum" => {}
                "preConditions" => cs.preconditions = Some(preconditions(c, path, cline, &who)?),
                "rollback" => {
                    let so_far = std::mem::take(&mut cs.rollback);
                    cs.rollback = self.rollback(c, path, cline, &who, &cs.filename, so_far);
                }
                "modifySql" => return Err(err(format!("{who}: modifySql is not supported; write the SQL you want"))),
                _ => {
                    let (change, sum) = self.change(c, path, cline, &who)?;
                    if let Some(sum) = sum {
                        sums.push(sum);
                    }
                    cs.changes.push(change);
                }
            }
        }
        if let Some(sql) = n.attrs.iter().find(|(k, _)| k == "rollback").map(|(_, v)| v.clone()) {
            let so_far = std::mem::take(&mut cs.rollback);
            cs.rollback = add_rollback(so_far, Ok(vec![raw_sql(&sql)]));
        }
        cs.checksum = checksum::changeset(&sums);
        Ok(cs)
    }

    /// A `<rollback>` (one of possibly several) added to what the changeset had so far. A
    /// rollback that cannot be read is kept as [`Rollback::Unusable`]: only a rollback that
    /// runs it fails, never `update`.
    fn rollback(&mut self, n: &Node, path: &str, line: usize, who: &str, filename: &str, so_far: Rollback) -> Rollback {
        let more = self.rollback_changes(n, path, line, who, filename);
        add_rollback(so_far, more)
    }

    fn rollback_changes(
        &mut self,
        n: &Node,
        path: &str,
        line: usize,
        who: &str,
        filename: &str,
    ) -> Result<Vec<Change>, ChangelogError> {
        if let Some(id) = n.get("changeSetId") {
            // The changes of an earlier changeset, as Liquibase's handleRollbackNode finds it:
            // same path (default: this changeset's), id and author, ignoring case.
            let author = n.get("changeSetAuthor").unwrap_or_default();
            let target = n.get("changeSetPath").unwrap_or_else(|| filename.to_string());
            return changes_of(&self.changesets, &target, &id, &author)
                .map_err(|m| ChangelogError::new(path, Some(line), format!("{who}: {m}")));
        }
        let mut out = Vec::new();
        if let Some(t) = &n.text {
            if !t.trim().is_empty() {
                out.push(raw_sql(t));
            }
        }
        // YAML `rollback: {sql: …}` is a mapping of sql's attributes.
        if n.children.is_empty() && n.attrs.iter().any(|(k, _)| k == "sql") {
            let (c, _) = self.change(&Node { name: "sql".into(), ..n.clone() }, path, line, who)?;
            out.push(c);
            return Ok(out);
        }
        for c in n.flat_children("changes") {
            let (c, _) = self.change(c, path, c.line.unwrap_or(line), who)?;
            out.push(c);
        }
        Ok(out)
    }

    /// One change and its checksum (None when the change is for another database).
    fn change(
        &mut self,
        n: &Node,
        path: &str,
        line: usize,
        who: &str,
    ) -> Result<(Change, Option<String>), ChangelogError> {
        let ty = n.name.as_str();
        let Some(spec) = spec(ty) else {
            return Err(ChangelogError::new(
                path,
                Some(line),
                format!(
                    "{who}: change type {ty} is not supported; use one of {} or an sql change",
                    SUPPORTED.join(", ")
                ),
            ));
        };
        let err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: {ty}: {m}"));
        let has_columns = matches!(ty, "createTable" | "addColumn" | "createIndex" | "insert" | "update");
        for (k, _) in &n.attrs {
            if !spec.iter().any(|(s, _)| s == k) {
                return Err(err(format!("attribute {k} is not supported; remove it")));
            }
        }
        for c in &n.children {
            let ok = match c.name.as_str() {
                "column" | "columns" => has_columns,
                "where" => matches!(ty, "update" | "delete"),
                "comment" => ty == "sql",
                k => spec.iter().any(|(s, kind)| *s == k && *kind == K::Text) && c.children.is_empty(),
            };
            if !ok {
                return Err(err(format!("element {} is not supported here; remove it", c.name)));
            }
        }
        // Checksum fields: the set attributes in Liquibase's canonical form.
        let mut fields: Vec<(String, SVal)> = Vec::new();
        for (k, kind) in spec {
            if *kind == K::Excluded || (*kind == K::Text && ty == "createView") {
                continue;
            }
            if let Some(v) = n.get(k) {
                let v = if *kind == K::Bool {
                    canon_bool(&v).ok_or_else(|| err(format!("{k} must be true or false")))?
                } else {
                    v
                };
                fields.push((k.to_string(), SVal::Str(v)));
            }
        }
        if ty == "addForeignKeyConstraint" {
            // Liquibase turns deleteCascade into onDelete=CASCADE when it loads the change.
            if let Some(i) = fields.iter().position(|(k, _)| k == "deleteCascade") {
                let (_, v) = fields.remove(i);
                if matches!(&v, SVal::Str(b) if b == "true") {
                    fields.retain(|(k, _)| k != "onDelete");
                    fields.push(("onDelete".into(), SVal::Str("CASCADE".into())));
                }
            }
        }
        let mut columns = Vec::new();
        let mut col_fields = Vec::new();
        if has_columns {
            for c in n.flat_children("columns").into_iter().filter(|c| c.name == "column") {
                let (col, f) = column(c, &err)?;
                columns.push(col);
                col_fields.push(f);
            }
            if !col_fields.is_empty() {
                fields.push(("columns".into(), SVal::List(col_fields)));
            }
        }
        let s = |k: &str| n.get(k);
        let req = |k: &str| s(k).filter(|v| !v.trim().is_empty()).ok_or_else(|| err(format!("{k} is required")));
        let flag = |k: &str| s(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let table =
            || -> Result<Name, ChangelogError> { Ok(Name { schema: s("schemaName"), name: req("tableName")? }) };
        let list = |v: String| v.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect::<Vec<_>>();
        let change = match ty {
            "createTable" => Change::CreateTable { table: table()?, remarks: s("remarks"), columns },
            "dropTable" => Change::DropTable { table: table()?, cascade: flag("cascadeConstraints") },
            "renameTable" => {
                Change::RenameTable { schema: s("schemaName"), old: req("oldTableName")?, new: req("newTableName")? }
            }
            "addColumn" => Change::AddColumn { table: table()?, columns },
            "dropColumn" => Change::DropColumn { table: table()?, column: req("columnName")? },
            "renameColumn" => Change::RenameColumn {
                table: table()?,
                old: req("oldColumnName")?,
                new: req("newColumnName")?,
                remarks: s("remarks"),
            },
            "modifyDataType" => {
                Change::ModifyDataType { table: table()?, column: req("columnName")?, new_type: req("newDataType")? }
            }
            "addNotNullConstraint" => Change::AddNotNullConstraint {
                table: table()?,
                column: req("columnName")?,
                default_null_value: s("defaultNullValue"),
            },
            "dropNotNullConstraint" => Change::DropNotNullConstraint { table: table()?, column: req("columnName")? },
            "addDefaultValue" => {
                let value =
                    value_of(n, "default", &err)?.ok_or_else(|| err("a defaultValue… attribute is required".into()))?;
                Change::AddDefaultValue { table: table()?, column: req("columnName")?, value }
            }
            "dropDefaultValue" => Change::DropDefaultValue { table: table()?, column: req("columnName")? },
            "addPrimaryKey" => Change::AddPrimaryKey {
                table: table()?,
                columns: list(req("columnNames")?),
                constraint_name: s("constraintName"),
            },
            "addUniqueConstraint" => Change::AddUniqueConstraint {
                table: table()?,
                columns: list(req("columnNames")?),
                constraint_name: s("constraintName"),
                deferrable: flag("deferrable"),
                initially_deferred: flag("initiallyDeferred"),
            },
            "addForeignKeyConstraint" => {
                let mut on_delete = s("onDelete");
                if flag("deleteCascade") {
                    on_delete = Some("CASCADE".into());
                }
                Change::AddForeignKeyConstraint {
                    table: Name { schema: s("baseTableSchemaName"), name: req("baseTableName")? },
                    columns: list(req("baseColumnNames")?),
                    constraint_name: req("constraintName")?,
                    referenced: Name { schema: s("referencedTableSchemaName"), name: req("referencedTableName")? },
                    referenced_columns: list(req("referencedColumnNames")?),
                    on_delete,
                    on_update: s("onUpdate"),
                    deferrable: flag("deferrable"),
                    initially_deferred: flag("initiallyDeferred"),
                }
            }
            "dropForeignKeyConstraint" => Change::DropForeignKeyConstraint {
                table: Name { schema: s("baseTableSchemaName"), name: req("baseTableName")? },
                constraint_name: req("constraintName")?,
            },
            "createIndex" => {
                if columns.is_empty() {
                    return Err(err("needs at least one column".into()));
                }
                Change::CreateIndex { table: table()?, index_name: req("indexName")?, unique: flag("unique"), columns }
            }
            "dropIndex" => Change::DropIndex {
                index: Name { schema: s("schemaName"), name: req("indexName")? },
                table: s("tableName"),
            },
            "createSequence" => Change::CreateSequence {
                sequence: Name { schema: s("schemaName"), name: req("sequenceName")? },
                data_type: s("dataType"),
                start: s("startValue"),
                increment: s("incrementBy"),
                min: s("minValue"),
                max: s("maxValue"),
                cache: s("cacheSize"),
                cycle: s("cycle").map(|v| v.eq_ignore_ascii_case("true")),
            },
            "createView" => {
                let query = s("selectQuery").or_else(|| n.text.clone()).map(|q| q.trim().to_string());
                let query = query.filter(|q| !q.is_empty()).ok_or_else(|| err("selectQuery is required".into()))?;
                let view = Name { schema: s("schemaName"), name: req("viewName")? };
                let ser = checksum::compute(&checksum::serialize(ty, &fields));
                let sum = checksum::compute(&format!("{ser}:{}", checksum::sql(&query)));
                let c = Change::CreateView { view, query, replace: flag("replaceIfExists"), remarks: s("remarks") };
                return Ok((c, Some(sum)));
            }
            "dropView" => Change::DropView { view: Name { schema: s("schemaName"), name: req("viewName")? } },
            "setTableRemarks" => Change::SetTableRemarks { table: table()?, remarks: req("remarks")? },
            "setColumnRemarks" => {
                Change::SetColumnRemarks { table: table()?, column: req("columnName")?, remarks: req("remarks")? }
            }
            "insert" => Change::Insert { table: table()?, columns },
            "update" => {
                Change::Update { table: table()?, columns, where_clause: s("where").map(|w| w.trim().to_string()) }
            }
            "delete" => Change::Delete { table: table()?, where_clause: s("where").map(|w| w.trim().to_string()) },
            "tagDatabase" => Change::TagDatabase { tag: req("tag")? },
            "sql" => {
                let text = s("sql").or_else(|| n.text.clone()).unwrap_or_default();
                let sql = sql_change(n, text.trim().to_string(), false, &err)?;
                let sum = expr::dbms_match(sql.dbms.as_deref(), "postgresql").then(|| checksum::sql(&sql.sql));
                return Ok((Change::Sql(sql), sum));
            }
            "sqlFile" => {
                let p = req("path")?;
                let rel = bool_attr(n, "relativeToChangelogFile", path, Some(line))?.unwrap_or(false);
                let file = if rel { join(parent(path), &p) } else { normalize(&p) };
                let text = self.read(&file, path, Some(line))?;
                let sql = sql_change(n, text, false, &err)?;
                let sum = expr::dbms_match(sql.dbms.as_deref(), "postgresql").then(|| checksum::sql(&sql.sql));
                let text = sql.sql.trim().to_string();
                return Ok((Change::SqlFile { path: p, sql: SqlChange { sql: text, ..sql } }, sum));
            }
            _ => unreachable!("spec() knows only the types above"),
        };
        Ok((change, Some(checksum::compute(&checksum::serialize(ty, &fields)))))
    }
}

/// The changes of the earlier changeset(s) `path::id::author` (a rollback's reference),
/// found as Liquibase's `getChangeSets` does: path, id and author ignoring case, for
/// PostgreSQL.
pub(crate) fn changes_of(earlier: &[ChangeSet], path: &str, id: &str, author: &str) -> Result<Vec<Change>, String> {
    let target = normalize(path);
    let found: Vec<&ChangeSet> = earlier
        .iter()
        .filter(|c| {
            c.id.eq_ignore_ascii_case(id)
                && c.author.eq_ignore_ascii_case(author)
                && normalize(&c.filename).eq_ignore_ascii_case(&target)
                && c.applies_to_postgresql()
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "its rollback refers to changeset {target}::{id}::{author}, which is not defined before it; give the \
             id, author and path of an earlier changeset"
        ));
    }
    Ok(found.iter().flat_map(|c| c.changes.iter().cloned()).collect())
}

/// Adds a rollback's changes to what a changeset had (several `<rollback>`s add up, as in
/// Liquibase); an unusable part makes the whole rollback unusable.
pub(crate) fn add_rollback(so_far: Rollback, more: Result<Vec<Change>, ChangelogError>) -> Rollback {
    match (so_far, more) {
        (Rollback::Unusable(e), _) | (_, Err(e)) => Rollback::Unusable(e),
        (Rollback::Auto, Ok(more)) => Rollback::Changes(more),
        (Rollback::Changes(mut v), Ok(more)) => {
            v.extend(more);
            Rollback::Changes(v)
        }
    }
}

fn raw_sql(sql: &str) -> Change {
    Change::Sql(SqlChange {
        sql: sql.trim().to_string(),
        split_statements: true,
        strip_comments: false,
        end_delimiter: None,
        dbms: None,
    })
}

fn sql_change(
    n: &Node,
    sql: String,
    strip_default: bool,
    err: &dyn Fn(String) -> ChangelogError,
) -> Result<SqlChange, ChangelogError> {
    let b = |k: &str, d: bool| -> Result<bool, ChangelogError> {
        match n.get(k) {
            None => Ok(d),
            Some(v) => canon_bool(&v).map(|v| v == "true").ok_or_else(|| err(format!("{k} must be true or false"))),
        }
    };
    Ok(SqlChange {
        sql,
        split_statements: b("splitStatements", true)?,
        strip_comments: b("stripComments", strip_default)?,
        end_delimiter: n.get("endDelimiter"),
        dbms: n.get("dbms"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum K {
    Str,
    Bool,
    /// Part of the change but not of its v9 checksum.
    Excluded,
    /// May also be written as element text (`<where>`, `<sql>`, the view's query).
    Text,
}

const SUPPORTED: &[&str] = &[
    "createTable",
    "dropTable",
    "renameTable",
    "addColumn",
    "dropColumn",
    "renameColumn",
    "modifyDataType",
    "addNotNullConstraint",
    "dropNotNullConstraint",
    "addDefaultValue",
    "dropDefaultValue",
    "addPrimaryKey",
    "addUniqueConstraint",
    "addForeignKeyConstraint",
    "dropForeignKeyConstraint",
    "createIndex",
    "dropIndex",
    "createSequence",
    "createView",
    "dropView",
    "setTableRemarks",
    "setColumnRemarks",
    "insert",
    "update",
    "delete",
    "sql",
    "sqlFile",
    "tagDatabase",
];

/// The attributes each change type accepts, as Liquibase names them.
fn spec(ty: &str) -> Option<&'static [(&'static str, K)]> {
    use K::*;
    Some(match ty {
        "createTable" => &[("schemaName", Str), ("tableName", Str), ("remarks", Str)],
        "dropTable" => &[("schemaName", Str), ("tableName", Str), ("cascadeConstraints", Bool)],
        "renameTable" => &[("schemaName", Str), ("oldTableName", Str), ("newTableName", Str)],
        "addColumn" => &[("schemaName", Str), ("tableName", Str)],
        "dropColumn" => &[("schemaName", Str), ("tableName", Str), ("columnName", Str)],
        "renameColumn" => &[
            ("schemaName", Str),
            ("tableName", Str),
            ("oldColumnName", Str),
            ("newColumnName", Str),
            ("columnDataType", Str),
            ("remarks", Str),
        ],
        "modifyDataType" => &[("schemaName", Str), ("tableName", Str), ("columnName", Str), ("newDataType", Str)],
        "addNotNullConstraint" => &[
            ("schemaName", Str),
            ("tableName", Str),
            ("columnName", Str),
            ("columnDataType", Str),
            ("defaultNullValue", Str),
        ],
        "dropNotNullConstraint" => {
            &[("schemaName", Str), ("tableName", Str), ("columnName", Str), ("columnDataType", Str)]
        }
        "addDefaultValue" => &[
            ("schemaName", Str),
            ("tableName", Str),
            ("columnName", Str),
            ("columnDataType", Str),
            ("defaultValue", Str),
            ("defaultValueNumeric", Str),
            ("defaultValueBoolean", Bool),
            ("defaultValueDate", Str),
            ("defaultValueComputed", Str),
        ],
        "dropDefaultValue" => &[("schemaName", Str), ("tableName", Str), ("columnName", Str), ("columnDataType", Str)],
        "addPrimaryKey" => &[("schemaName", Str), ("tableName", Str), ("columnNames", Str), ("constraintName", Str)],
        "addUniqueConstraint" => &[
            ("schemaName", Str),
            ("tableName", Str),
            ("columnNames", Str),
            ("constraintName", Str),
            ("deferrable", Bool),
            ("initiallyDeferred", Bool),
        ],
        "addForeignKeyConstraint" => &[
            ("baseTableSchemaName", Str),
            ("baseTableName", Str),
            ("baseColumnNames", Str),
            ("constraintName", Str),
            ("referencedTableSchemaName", Str),
            ("referencedTableName", Str),
            ("referencedColumnNames", Str),
            ("onDelete", Str),
            ("onUpdate", Str),
            ("deleteCascade", Bool),
            ("deferrable", Bool),
            ("initiallyDeferred", Bool),
        ],
        "dropForeignKeyConstraint" => &[("baseTableSchemaName", Str), ("baseTableName", Str), ("constraintName", Str)],
        "createIndex" => &[("schemaName", Str), ("tableName", Str), ("indexName", Str), ("unique", Bool)],
        "dropIndex" => &[("schemaName", Str), ("tableName", Str), ("indexName", Str)],
        "createSequence" => &[
            ("schemaName", Str),
            ("sequenceName", Str),
            ("dataType", Str),
            ("startValue", Str),
            ("incrementBy", Str),
            ("minValue", Str),
            ("maxValue", Str),
            ("cacheSize", Str),
            ("cycle", Bool),
        ],
        "createView" => &[
            ("schemaName", Str),
            ("viewName", Str),
            ("selectQuery", Text),
            ("replaceIfExists", Bool),
            ("remarks", Str),
        ],
        "dropView" => &[("schemaName", Str), ("viewName", Str)],
        "setTableRemarks" => &[("schemaName", Str), ("tableName", Str), ("remarks", Str)],
        "setColumnRemarks" => &[("schemaName", Str), ("tableName", Str), ("columnName", Str), ("remarks", Str)],
        "insert" => &[("schemaName", Str), ("tableName", Str)],
        "update" => &[("schemaName", Str), ("tableName", Str), ("where", Text)],
        "delete" => &[("schemaName", Str), ("tableName", Str), ("where", Text)],
        "tagDatabase" => &[("tag", Str)],
        "sql" => {
            &[("sql", Text), ("splitStatements", Bool), ("stripComments", Bool), ("endDelimiter", Str), ("dbms", Str)]
        }
        "sqlFile" => &[
            ("path", Str),
            ("relativeToChangelogFile", Bool),
            ("encoding", Str),
            ("splitStatements", Bool),
            ("stripComments", Bool),
            ("endDelimiter", Str),
            ("dbms", Str),
        ],
        _ => return None,
    })
}

const COLUMN_ATTRS: &[(&str, K)] = &[
    ("name", K::Str),
    ("type", K::Str),
    ("value", K::Str),
    ("valueNumeric", K::Str),
    ("valueBoolean", K::Bool),
    ("valueDate", K::Str),
    ("valueComputed", K::Str),
    ("defaultValue", K::Str),
    ("defaultValueNumeric", K::Str),
    ("defaultValueBoolean", K::Bool),
    ("defaultValueDate", K::Str),
    ("defaultValueComputed", K::Str),
    ("autoIncrement", K::Bool),
    ("startWith", K::Str),
    ("incrementBy", K::Str),
    ("remarks", K::Str),
    ("descending", K::Bool),
];

const CONSTRAINT_ATTRS: &[(&str, K)] = &[
    ("nullable", K::Bool),
    ("primaryKey", K::Bool),
    ("primaryKeyName", K::Str),
    ("unique", K::Bool),
    ("uniqueConstraintName", K::Str),
    ("foreignKeyName", K::Str),
    ("references", K::Str),
    ("referencedTableSchemaName", K::Str),
    ("referencedTableName", K::Str),
    ("referencedColumnNames", K::Str),
    ("deleteCascade", K::Bool),
    ("deferrable", K::Bool),
    ("initiallyDeferred", K::Bool),
];

fn canon_bool(v: &str) -> Option<String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some("true".into()),
        "false" => Some("false".into()),
        _ => None,
    }
}

fn canon_fields(
    n: &Node,
    spec: &[(&str, K)],
    what: &str,
    err: &dyn Fn(String) -> ChangelogError,
) -> Result<Vec<(String, SVal)>, ChangelogError> {
    for (k, _) in &n.attrs {
        if !spec.iter().any(|(s, _)| s == k) {
            return Err(err(format!("{what} attribute {k} is not supported; remove it")));
        }
    }
    let mut out = Vec::new();
    for (k, kind) in spec {
        if let Some(v) = n.get(k) {
            let v = if *kind == K::Bool {
                canon_bool(&v).ok_or_else(|| err(format!("{what} {k} must be true or false")))?
            } else if k.ends_with("Date") && n.yaml_dates.iter().any(|d| d == k) {
                // snakeyaml reads an unquoted date as a timestamp at midnight.
                format!("{v}T00:00:00")
            } else {
                v
            };
            out.push((k.to_string(), SVal::Str(v)));
        }
    }
    Ok(out)
}

fn value_of(n: &Node, prefix: &str, err: &dyn Fn(String) -> ChangelogError) -> Result<Option<Value>, ChangelogError> {
    let cap = |s: &str| if prefix.is_empty() { s.to_ascii_lowercase() } else { format!("{prefix}{s}") };
    let mut found = Vec::new();
    if let Some(v) = n.get(&cap("Value")) {
        found.push(Value::Text(v));
    }
    if let Some(v) = n.get(&format!("{}Numeric", cap("Value"))) {
        found.push(Value::Numeric(v));
    }
    if let Some(v) = n.get(&format!("{}Boolean", cap("Value"))) {
        let b = canon_bool(&v).ok_or_else(|| err(format!("{}Boolean must be true or false", cap("Value"))))?;
        found.push(Value::Boolean(b == "true"));
    }
    if let Some(v) = n.get(&format!("{}Date", cap("Value"))) {
        found.push(Value::Date(v));
    }
    if let Some(v) = n.get(&format!("{}Computed", cap("Value"))) {
        found.push(Value::Computed(v));
    }
    if found.len() > 1 {
        return Err(err(format!("give only one of the {}… attributes", cap("Value"))));
    }
    Ok(found.pop())
}

fn column(n: &Node, err: &dyn Fn(String) -> ChangelogError) -> Result<(Column, Vec<(String, SVal)>), ChangelogError> {
    let mut fields = canon_fields(n, COLUMN_ATTRS, "column", err)?;
    for c in &n.children {
        if c.name != "constraints" {
            return Err(err(format!("column element {} is not supported; remove it", c.name)));
        }
    }
    let constraints = match n.child("constraints") {
        Some(c) => {
            let f = canon_fields(c, CONSTRAINT_ATTRS, "constraints", err)?;
            fields.push(("constraints".into(), SVal::Obj(f)));
            let flag = |k: &str| c.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
            Some(Constraints {
                nullable: c.get("nullable").map(|v| v.eq_ignore_ascii_case("true")),
                primary_key: flag("primaryKey"),
                primary_key_name: c.get("primaryKeyName"),
                unique: flag("unique"),
                unique_constraint_name: c.get("uniqueConstraintName"),
                foreign_key_name: c.get("foreignKeyName"),
                references: c.get("references"),
                referenced_table_schema: c.get("referencedTableSchemaName"),
                referenced_table: c.get("referencedTableName"),
                referenced_columns: c.get("referencedColumnNames"),
                delete_cascade: flag("deleteCascade"),
                deferrable: flag("deferrable"),
                initially_deferred: flag("initiallyDeferred"),
            })
        }
        None => None,
    };
    let name = n.get("name").ok_or_else(|| err("every column needs a name".into()))?;
    let float = |v: Value, key: &str| match v {
        Value::Numeric(x) if n.yaml_floats.iter().any(|k| k == key) && x.ends_with(".0") => {
            Value::Numeric(x.trim_end_matches(".0").to_string())
        }
        v => v,
    };
    let date = |v: Value| match v {
        Value::Date(d) if n.yaml_dates.iter().any(|k| k.ends_with("Date")) && d.len() == 10 => {
            Value::Date(format!("{d}T00:00:00"))
        }
        v => v,
    };
    let col = Column {
        name,
        data_type: n.get("type"),
        value: value_of(n, "", err)?.map(date).map(|v| float(v, "valueNumeric")),
        default: value_of(n, "default", err)?.map(date).map(|v| float(v, "defaultValueNumeric")),
        auto_increment: n.get("autoIncrement").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        start_with: n.get("startWith"),
        increment_by: n.get("incrementBy"),
        remarks: n.get("remarks"),
        descending: n.get("descending").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        constraints,
    };
    Ok((col, fields))
}

pub(crate) fn bool_attr(n: &Node, k: &str, path: &str, line: Option<usize>) -> Result<Option<bool>, ChangelogError> {
    match n.get(k) {
        None => Ok(None),
        Some(v) => canon_bool(&v)
            .map(|b| Some(b == "true"))
            .ok_or_else(|| ChangelogError::new(path, line, format!("{k} must be true or false, not {v:?}"))),
    }
}

fn check_attrs(n: &Node, allowed: &[&str], path: &str, line: Option<usize>, what: &str) -> Result<(), ChangelogError> {
    for (k, _) in &n.attrs {
        if !allowed.contains(&k.as_str()) {
            return Err(ChangelogError::new(path, line, format!("{what} attribute {k} is not supported; remove it")));
        }
    }
    Ok(())
}

pub(crate) fn on_fail(v: Option<String>, path: &str, line: usize) -> Result<OnFail, ChangelogError> {
    Ok(match v.as_deref().map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        None | Some("HALT") => OnFail::Halt,
        Some("MARK_RAN") => OnFail::MarkRan,
        Some("CONTINUE") => OnFail::Continue,
        Some("WARN") => OnFail::Warn,
        Some(o) => {
            return Err(ChangelogError::new(
                path,
                Some(line),
                format!("onFail/onError {o} is unknown; use HALT, MARK_RAN, CONTINUE or WARN"),
            ))
        }
    })
}

fn preconditions(n: &Node, path: &str, line: usize, who: &str) -> Result<Preconditions, ChangelogError> {
    check_attrs(n, &["onFail", "onError", "onFailMessage", "onErrorMessage"], path, Some(line), "preConditions")?;
    let mut all = Vec::new();
    for c in &n.children {
        all.push(condition(c, path, c.line.unwrap_or(line), who)?);
    }
    Ok(Preconditions {
        on_fail: on_fail(n.get("onFail"), path, line)?,
        on_error: on_fail(n.get("onError"), path, line)?,
        on_fail_message: n.get("onFailMessage"),
        condition: Condition::All(all),
    })
}

fn condition(n: &Node, path: &str, line: usize, who: &str) -> Result<Condition, ChangelogError> {
    let err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: precondition {}: {m}", n.name));
    let kids = |n: &Node| -> Result<Vec<Condition>, ChangelogError> {
        n.children.iter().map(|c| condition(c, path, c.line.unwrap_or(line), who)).collect()
    };
    let req = |k: &str| n.get(k).ok_or_else(|| err(format!("{k} is required")));
    Ok(match n.name.as_str() {
        "and" => Condition::All(kids(n)?),
        "or" => Condition::Any(kids(n)?),
        "not" => Condition::Not(kids(n)?),
        "tableExists" => {
            check_attrs(n, &["tableName", "schemaName"], path, Some(line), "tableExists")?;
            Condition::TableExists { schema: n.get("schemaName"), table: req("tableName")? }
        }
        "columnExists" => {
            check_attrs(n, &["tableName", "schemaName", "columnName"], path, Some(line), "columnExists")?;
            Condition::ColumnExists {
                schema: n.get("schemaName"),
                table: req("tableName")?,
                column: req("columnName")?,
            }
        }
        "sqlCheck" => {
            check_attrs(n, &["expectedResult", "sql"], path, Some(line), "sqlCheck")?;
            let sql = n.get("sql").or_else(|| n.text.clone()).map(|s| s.trim().to_string());
            let sql = sql.filter(|s| !s.is_empty()).ok_or_else(|| err("the SQL to run is required".into()))?;
            Condition::SqlCheck { expected: req("expectedResult")?.trim().to_string(), sql }
        }
        other => {
            return Err(ChangelogError::new(
                path,
                Some(line),
                format!(
                "{who}: precondition {other} is not supported; use tableExists, columnExists, sqlCheck, and, or, not"
            ),
            ))
        }
    })
}

/// Finds lines in YAML/JSON sources, which serde_yaml parses without positions.
struct LineFinder<'a> {
    src: &'a str,
    from: usize,
}

impl LineFinder<'_> {
    /// The first line at or after the previous hit that mentions `value` as a value.
    fn find(&mut self, value: &str) -> Option<usize> {
        for (i, l) in self.src.lines().enumerate().skip(self.from) {
            let hit = l.split([':', ',', '{', '}']).skip(1).any(|part| {
                let p = part.trim().trim_matches(|c| c == '"' || c == '\'');
                p == value
            });
            if hit {
                self.from = i + 1;
                return Some(i + 1);
            }
        }
        None
    }
}

//! Every attribute of every open-source Liquibase 4.28 change type (its `@DatabaseChange`
//! parameters, as `ChangeFactory` reports them), its Java type (which decides how the
//! checksum writes it), and what pgplane does with it on PostgreSQL: honoured, ignored
//! because Liquibase ignores it on PostgreSQL too, or refused because pgplane cannot do
//! what Liquibase would. The parser accepts exactly these attributes.

/// How a parameter's value is read and written into the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum P {
    /// A string, as written.
    Str,
    /// A string that may also be the element's text (`<where>`, `<sql>`).
    Text,
    /// `true`/`false`.
    Bool,
    /// A `BigInteger`: written in canonical digits.
    BigInt,
    /// Not part of the v9 checksum (Liquibase's `getExcludedFieldFilters`).
    Excluded,
    /// A boolean not part of the v9 checksum.
    ExcludedBool,
}

/// What pgplane does with an attribute on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrHandling {
    Honoured,
    /// Liquibase accepts it and does nothing with it on PostgreSQL; so does pgplane.
    Ignored(&'static str),
    /// pgplane stops before anything runs: it cannot do what Liquibase would.
    Refused(&'static str),
}

use AttrHandling::{Honoured as H, Ignored as I, Refused as R};
use P::*;

const CATALOG: AttrHandling = I("PostgreSQL has no catalogs in object names; Liquibase drops it");

pub(crate) type Param = (&'static str, P, AttrHandling);

/// The parameters of a change type; `None` for a type pgplane does not know.
pub(crate) fn params(ty: &str) -> Option<&'static [Param]> {
    Some(match ty {
        "addAutoIncrement" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, I("the column keeps its type; Liquibase's PostgreSQL statements do not use it")),
            ("columnName", Str, H),
            ("defaultOnNull", Bool, I("Oracle only")),
            (
                "generationType",
                Str,
                I("Liquibase creates a sequence default on PostgreSQL, whatever the generation type"),
            ),
            ("incrementBy", BigInt, H),
            ("schemaName", Str, H),
            ("startWith", BigInt, H),
            ("tableName", Str, H),
        ],
        "addColumn" => &[("catalogName", Str, CATALOG), ("schemaName", Str, H), ("tableName", Str, H)],
        "addDefaultValue" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, H),
            ("columnName", Str, H),
            ("defaultValue", Str, H),
            ("defaultValueBoolean", Bool, H),
            ("defaultValueComputed", Str, H),
            ("defaultValueConstraintName", Str, I("MSSQL only")),
            ("defaultValueDate", Str, H),
            ("defaultValueNumeric", Str, H),
            ("defaultValueSequenceNext", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "addForeignKeyConstraint" => &[
            ("baseColumnNames", Str, H),
            ("baseTableCatalogName", Str, CATALOG),
            ("baseTableName", Str, H),
            ("baseTableSchemaName", Str, H),
            ("constraintName", Str, H),
            ("deferrable", Bool, H),
            ("deleteCascade", Bool, H),
            ("initiallyDeferred", Bool, H),
            ("onDelete", Str, H),
            ("onUpdate", Str, H),
            ("referencedColumnNames", Str, H),
            ("referencedTableCatalogName", Str, CATALOG),
            ("referencedTableName", Str, H),
            ("referencedTableSchemaName", Str, H),
            ("referencesUniqueColumn", ExcludedBool, I("Liquibase's setter discards it: no SQL, no checksum part")),
            ("validate", Bool, H),
        ],
        "addLookupTable" => &[
            ("constraintName", Str, H),
            ("existingColumnName", Str, H),
            ("existingTableCatalogName", Str, CATALOG),
            ("existingTableName", Str, H),
            ("existingTableSchemaName", Str, H),
            ("newColumnDataType", Str, H),
            ("newColumnName", Str, H),
            ("newTableCatalogName", Str, CATALOG),
            ("newTableName", Str, H),
            ("newTableSchemaName", Str, H),
        ],
        "addNotNullConstraint" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, H),
            ("columnName", Str, H),
            ("constraintName", Str, I("PostgreSQL's NOT NULL has no name; Liquibase drops it")),
            ("defaultNullValue", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("validate", Bool, I("Oracle only (ENABLE NOVALIDATE); PostgreSQL checks the rows")),
        ],
        "addPrimaryKey" => &[
            ("catalogName", Str, CATALOG),
            ("clustered", Bool, H),
            ("columnNames", Str, H),
            ("constraintName", Str, H),
            ("forIndexCatalogName", Str, CATALOG),
            ("forIndexName", Str, H),
            ("forIndexSchemaName", Str, I("the index is the table's; Liquibase writes only its name")),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("tablespace", Str, H),
            ("validate", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
        ],
        "addUniqueConstraint" => &[
            ("catalogName", Str, CATALOG),
            ("clustered", Bool, R("Liquibase's validation rejects clustered=true on PostgreSQL (MSSQL only)")),
            ("columnNames", Str, H),
            ("constraintName", Str, H),
            ("deferrable", Bool, H),
            ("disabled", Bool, I("Oracle only")),
            ("forIndexCatalogName", Str, CATALOG),
            ("forIndexName", Str, H),
            ("forIndexSchemaName", Str, I("the index is the table's; Liquibase writes only its name")),
            ("initiallyDeferred", Bool, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("tablespace", Str, H),
            ("validate", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
        ],
        "alterSequence" => &[
            ("cacheSize", BigInt, H),
            ("catalogName", Str, CATALOG),
            ("cycle", Bool, H),
            ("dataType", Str, H),
            ("incrementBy", BigInt, H),
            ("maxValue", BigInt, H),
            ("minValue", BigInt, H),
            ("ordered", Bool, R("Liquibase writes ORDER/NOORDER, which PostgreSQL rejects")),
            ("schemaName", Str, H),
            ("sequenceName", Str, H),
        ],
        "createIndex" => &[
            ("associatedWith", Excluded, I("informational (which constraint the index serves)")),
            ("catalogName", Str, CATALOG),
            ("clustered", Bool, H),
            ("indexName", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("tablespace", Str, H),
            ("unique", Bool, H),
        ],
        "createProcedure" => &[
            ("catalogName", Str, CATALOG),
            ("comments", Excluded, I("documentation only")),
            ("dbms", Excluded, H),
            ("encoding", Excluded, H),
            ("path", Excluded, H),
            ("procedureName", Str, H),
            ("procedureText", Excluded, H),
            ("relativeToChangelogFile", ExcludedBool, H),
            ("replaceIfExists", Bool, R("Liquibase refuses replaceIfExists on PostgreSQL (write CREATE OR REPLACE)")),
            ("schemaName", Str, H),
        ],
        "createSequence" => &[
            ("cacheSize", BigInt, H),
            ("catalogName", Str, CATALOG),
            ("cycle", Bool, H),
            ("dataType", Str, H),
            ("incrementBy", BigInt, H),
            ("maxValue", BigInt, H),
            ("minValue", BigInt, H),
            ("ordered", Bool, I("not for PostgreSQL; Liquibase writes nothing for it")),
            ("schemaName", Str, H),
            ("sequenceName", Str, H),
            ("startValue", BigInt, H),
        ],
        "createTable" => &[
            ("catalogName", Str, CATALOG),
            ("ifNotExists", ExcludedBool, H),
            ("remarks", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("tableType", Str, H),
            ("tablespace", Str, H),
        ],
        "createView" => &[
            ("catalogName", Str, CATALOG),
            ("encoding", Excluded, H),
            ("fullDefinition", Bool, H),
            ("path", Excluded, H),
            ("relativeToChangelogFile", ExcludedBool, H),
            ("remarks", Str, H),
            ("replaceIfExists", Bool, H),
            ("schemaName", Str, H),
            ("selectQuery", Excluded, H),
            ("viewName", Str, H),
        ],
        "delete" => &[("catalogName", Str, CATALOG), ("schemaName", Str, H), ("tableName", Str, H), ("where", Text, H)],
        "dropAllForeignKeyConstraints" => {
            &[("baseTableCatalogName", Str, CATALOG), ("baseTableName", Str, H), ("baseTableSchemaName", Str, H)]
        }
        "dropColumn" => {
            &[("catalogName", Str, CATALOG), ("columnName", Str, H), ("schemaName", Str, H), ("tableName", Str, H)]
        }
        "dropDefaultValue" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, I("not needed on PostgreSQL")),
            ("columnName", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "dropForeignKeyConstraint" => &[
            ("baseTableCatalogName", Str, CATALOG),
            ("baseTableName", Str, H),
            ("baseTableSchemaName", Str, H),
            ("constraintName", Str, H),
        ],
        "dropIndex" => &[
            ("catalogName", Str, CATALOG),
            ("indexName", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, I("an index name is unique in its schema on PostgreSQL; Liquibase writes only it")),
        ],
        "dropNotNullConstraint" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, I("not needed on PostgreSQL")),
            ("columnName", Str, H),
            ("constraintName", Str, I("PostgreSQL's NOT NULL has no name")),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "dropPrimaryKey" => &[
            ("catalogName", Str, CATALOG),
            ("constraintName", Str, H),
            ("dropIndex", Bool, I("Oracle only; PostgreSQL drops the key's index with it")),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "dropProcedure" => &[("catalogName", Str, CATALOG), ("procedureName", Str, H), ("schemaName", Str, H)],
        "dropSequence" => &[("catalogName", Str, CATALOG), ("schemaName", Str, H), ("sequenceName", Str, H)],
        "dropTable" => &[
            ("cascadeConstraints", Bool, H),
            ("catalogName", Str, CATALOG),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "dropUniqueConstraint" => &[
            ("catalogName", Str, CATALOG),
            ("constraintName", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
            ("uniqueColumns", Str, I("Sybase only")),
        ],
        "dropView" => {
            &[("catalogName", Str, CATALOG), ("ifExists", Bool, H), ("schemaName", Str, H), ("viewName", Str, H)]
        }
        "empty" => &[],
        "executeCommand" => &[("executable", Str, H), ("timeout", Str, H)],
        "insert" => &[("catalogName", Str, CATALOG), ("dbms", Str, H), ("schemaName", Str, H), ("tableName", Str, H)],
        "loadData" => &[
            ("catalogName", Str, CATALOG),
            ("commentLineStartsWith", Str, H),
            ("encoding", Str, H),
            ("file", Str, H),
            ("quotchar", Str, H),
            ("relativeToChangelogFile", Bool, H),
            ("schemaName", Str, H),
            ("separator", Str, H),
            ("tableName", Str, H),
            ("usePreparedStatements", Bool, H),
        ],
        "loadUpdateData" => &[
            ("catalogName", Str, CATALOG),
            ("commentLineStartsWith", Str, H),
            ("encoding", Str, H),
            ("file", Str, H),
            ("onlyUpdate", Bool, H),
            ("primaryKey", Str, H),
            ("quotchar", Str, H),
            ("relativeToChangelogFile", Bool, H),
            ("schemaName", Str, H),
            ("separator", Str, H),
            ("tableName", Str, H),
            ("usePreparedStatements", Bool, I("loadUpdateData never uses prepared statements in Liquibase 4.28")),
        ],
        "mergeColumns" => &[
            ("catalogName", Str, CATALOG),
            ("column1Name", Str, H),
            ("column2Name", Str, H),
            ("finalColumnName", Str, H),
            ("finalColumnType", Str, H),
            ("joinString", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "modifyDataType" => &[
            ("catalogName", Str, CATALOG),
            ("columnName", Str, H),
            ("newDataType", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "output" => &[("message", Text, H), ("target", Str, H)],
        "renameColumn" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, I("not needed on PostgreSQL")),
            ("newColumnName", Str, H),
            ("oldColumnName", Str, H),
            ("remarks", Str, I("Liquibase 4.28 writes no comment for renameColumn on PostgreSQL")),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "renameSequence" => &[
            ("catalogName", Str, CATALOG),
            ("newSequenceName", Str, H),
            ("oldSequenceName", Str, H),
            ("schemaName", Str, H),
        ],
        "renameTable" => {
            &[("catalogName", Str, CATALOG), ("newTableName", Str, H), ("oldTableName", Str, H), ("schemaName", Str, H)]
        }
        "renameView" => {
            &[("catalogName", Str, CATALOG), ("newViewName", Str, H), ("oldViewName", Str, H), ("schemaName", Str, H)]
        }
        "setColumnRemarks" => &[
            ("catalogName", Str, CATALOG),
            ("columnDataType", Str, I("MySQL only")),
            ("columnName", Str, H),
            ("columnParentType", Str, I("PostgreSQL's COMMENT ON COLUMN works for tables and views alike")),
            ("remarks", Str, H),
            ("schemaName", Str, H),
            ("tableName", Str, H),
        ],
        "setTableRemarks" => {
            &[("catalogName", Str, CATALOG), ("remarks", Str, H), ("schemaName", Str, H), ("tableName", Str, H)]
        }
        "sql" => &[
            ("comment", Text, I("documentation only")),
            ("dbms", Str, H),
            ("endDelimiter", Str, H),
            ("ignoreOriginalSplitStatements", Bool, I("only for runWith, which pgplane refuses")),
            ("splitStatements", Bool, H),
            ("sql", Text, H),
            ("stripComments", Bool, H),
        ],
        "sqlFile" => &[
            ("dbms", Str, H),
            ("encoding", Str, H),
            ("endDelimiter", Str, H),
            ("ignoreOriginalSplitStatements", Bool, I("only for runWith, which pgplane refuses")),
            ("path", Str, H),
            ("relativeToChangelogFile", Bool, H),
            ("splitStatements", Bool, H),
            ("stripComments", Bool, H),
        ],
        "stop" => &[("message", Text, H)],
        "tagDatabase" => &[("tag", Str, H)],
        "update" => &[("catalogName", Str, CATALOG), ("schemaName", Str, H), ("tableName", Str, H), ("where", Text, H)],
        _ => return None,
    })
}

/// Attributes of a `column` (Liquibase's `ColumnConfig` and its subclasses).
pub(crate) const COLUMN: &[Param] = &[
    ("name", Str, H),
    ("computed", Bool, H),
    ("type", Str, H),
    ("value", Text, H),
    ("valueNumeric", Str, H),
    ("valueDate", Str, H),
    ("valueBoolean", Str, H),
    ("valueBlobFile", Str, H),
    ("valueClobFile", Str, H),
    ("encoding", Str, H),
    ("valueComputed", Str, H),
    ("valueSequenceNext", Str, H),
    ("valueSequenceCurrent", Str, H),
    ("defaultValue", Str, H),
    ("defaultValueNumeric", Str, H),
    ("defaultValueDate", Str, H),
    ("defaultValueBoolean", Str, H),
    ("defaultValueComputed", Str, H),
    ("defaultValueSequenceNext", Str, H),
    ("defaultValueConstraintName", Str, I("MSSQL only")),
    ("autoIncrement", Bool, H),
    ("generationType", Str, H),
    ("defaultOnNull", Bool, I("Oracle only")),
    ("startWith", BigInt, H),
    ("incrementBy", BigInt, H),
    ("remarks", Str, H),
    ("descending", Bool, H),
];

/// Extra attributes of `addColumn`'s columns (`AddColumnConfig`).
pub(crate) const ADD_COLUMN: &[Param] = &[
    ("afterColumn", Str, R("Liquibase's validation rejects afterColumn on PostgreSQL, which appends columns")),
    ("beforeColumn", Str, R("Liquibase's validation rejects beforeColumn on PostgreSQL, which appends columns")),
    ("position", BigInt, R("Liquibase's validation rejects position on PostgreSQL, which appends columns")),
];

/// Extra attributes of `loadData`'s and `loadUpdateData`'s columns (`LoadDataColumnConfig`).
pub(crate) const LOAD_COLUMN: &[Param] = &[("index", BigInt, H), ("header", Str, H), ("allowUpdate", Bool, H)];

/// Attributes of a column's `constraints` (`ConstraintsConfig`).
pub(crate) const CONSTRAINTS: &[Param] = &[
    ("nullable", Bool, H),
    ("notNullConstraintName", Str, I("PostgreSQL's NOT NULL has no name; Liquibase drops it")),
    ("primaryKey", Bool, H),
    ("primaryKeyName", Str, H),
    ("primaryKeyTablespace", Str, H),
    ("references", Str, H),
    ("referencedTableCatalogName", Str, CATALOG),
    ("referencedTableSchemaName", Str, H),
    ("referencedTableName", Str, H),
    ("referencedColumnNames", Str, H),
    ("unique", Bool, H),
    ("uniqueConstraintName", Str, H),
    ("checkConstraint", Str, I("Liquibase writes no CHECK for it on PostgreSQL")),
    ("deleteCascade", Bool, H),
    ("foreignKeyName", Str, H),
    ("initiallyDeferred", Bool, H),
    ("deferrable", Bool, H),
    ("validateNullable", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
    ("validateUnique", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
    ("validatePrimaryKey", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
    ("validateForeignKey", Bool, I("Oracle only (ENABLE NOVALIDATE)")),
];

/// Which column attributes a change's columns take (Liquibase's column class per change).
pub(crate) fn column_kind(ty: &str) -> Option<&'static [Param]> {
    match ty {
        "addColumn" => Some(ADD_COLUMN),
        "loadData" | "loadUpdateData" => Some(LOAD_COLUMN),
        "createTable" | "createIndex" | "insert" | "update" | "dropColumn" => Some(&[]),
        _ => None,
    }
}

/// Liquibase Pro (commercial) change types: refused by name.
pub const PRO: &[&str] = &[
    "addCheckConstraint",
    "alterCompositeTypeAttributes",
    "changeCompositeTypeOwner",
    "createCompositeType",
    "createFunction",
    "createPackage",
    "createPackageBody",
    "createSynonym",
    "createTrigger",
    "disableCheckConstraint",
    "disableTrigger",
    "dropCheckConstraint",
    "dropCompositeType",
    "dropFunction",
    "dropPackage",
    "dropPackageBody",
    "dropSynonym",
    "dropTrigger",
    "enableCheckConstraint",
    "enableTrigger",
    "markUnused",
    "renameCompositeType",
    "renameCompositeTypeAttribute",
    "renameTrigger",
    "sqlPlus",
];

/// Every open-source change type pgplane runs.
pub const SUPPORTED: &[&str] = &[
    "addAutoIncrement",
    "addColumn",
    "addDefaultValue",
    "addForeignKeyConstraint",
    "addLookupTable",
    "addNotNullConstraint",
    "addPrimaryKey",
    "addUniqueConstraint",
    "alterSequence",
    "createIndex",
    "createProcedure",
    "createSequence",
    "createTable",
    "createView",
    "delete",
    "dropAllForeignKeyConstraints",
    "dropColumn",
    "dropDefaultValue",
    "dropForeignKeyConstraint",
    "dropIndex",
    "dropNotNullConstraint",
    "dropPrimaryKey",
    "dropProcedure",
    "dropSequence",
    "dropTable",
    "dropUniqueConstraint",
    "dropView",
    "empty",
    "executeCommand",
    "insert",
    "loadData",
    "loadUpdateData",
    "mergeColumns",
    "modifyDataType",
    "output",
    "renameColumn",
    "renameSequence",
    "renameTable",
    "renameView",
    "setColumnRemarks",
    "setTableRemarks",
    "sql",
    "sqlFile",
    "stop",
    "tagDatabase",
    "update",
];

/// One attribute of a change type (or of its columns and constraints) and what pgplane does
/// with it on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrRow {
    /// A change type, or `column` / `constraints`.
    pub change: &'static str,
    pub attribute: &'static str,
    /// `boolean`, `integer` or `text`.
    pub kind: &'static str,
    pub handling: AttrHandling,
}

/// The table behind the README's *Liquibase compatibility* section and its test: every
/// (change type, attribute) with its handling. Column and constraint attributes are listed
/// under `column` and `constraints`.
pub fn attribute_table() -> Vec<AttrRow> {
    let kind = |p: P| match p {
        P::Bool | P::ExcludedBool => "boolean",
        P::BigInt => "integer",
        P::Str | P::Text | P::Excluded => "text",
    };
    let mut out = Vec::new();
    for ty in SUPPORTED {
        for (name, p, h) in params(ty).unwrap_or(&[]) {
            out.push(AttrRow { change: ty, attribute: name, kind: kind(*p), handling: *h });
        }
    }
    for (name, p, h) in COLUMN.iter().chain(ADD_COLUMN).chain(LOAD_COLUMN) {
        out.push(AttrRow { change: "column", attribute: name, kind: kind(*p), handling: *h });
    }
    for (name, p, h) in CONSTRAINTS {
        out.push(AttrRow { change: "constraints", attribute: name, kind: kind(*p), handling: *h });
    }
    out
}

//! SMC fallback / CLC decline codes (`SMC_CLC_DECL_*`) and their names, as current kernels use
//! them (FACTS.md). Kernels <= 4.18 used other values for some codes; anything not in the table
//! prints as `unknown(0x…)`, never as a wrong name.

use std::fmt;

use serde::ser::SerializeStruct;

/// One `SMC_CLC_DECL_*` code, as smc_diag's FALLBACK attribute and the fallback counters carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeclineCode(pub u32);

/// (code, short name, description), one row a code.
#[rustfmt::skip]
const TABLE: &[(u32, &str, &str)] = &[
    (0x0101_0000, "MEM",        "insufficient memory"),
    (0x0201_0000, "TIMEOUT_CL", "timeout waiting for confirm link"),
    (0x0202_0000, "TIMEOUT_AL", "timeout waiting for add link"),
    (0x0300_0000, "CNFERR",     "configuration error"),
    (0x0301_0000, "PEERNOSMC",  "peer did not indicate SMC (no TCP option 254 back)"),
    (0x0302_0000, "IPSEC",      "IPsec in use"),
    (0x0303_0000, "NOSMCDEV",   "no SMC device found"),
    (0x0303_0001, "NOSMCDDEV",  "no SMC-D device"),
    (0x0303_0002, "NOSMCRDEV",  "no SMC-R device"),
    (0x0303_0003, "NOISM2SUPP", "no ISMv2 support"),
    (0x0303_0004, "NOV2EXT",    "peer sent no CLC v2 extension"),
    (0x0303_0005, "NOV2DEXT",   "peer sent no SMC-Dv2 extension"),
    (0x0303_0006, "NOSEID",     "peer sent no SEID"),
    (0x0303_0007, "NOSMCD2DEV", "no SMC-Dv2 device"),
    (0x0303_0008, "NOUEID",     "peer sent no UEID"),
    (0x0303_0009, "RELEASEERR", "release version negotiation failed"),
    (0x0303_000a, "MAXCONNERR", "max connections negotiation failed"),
    (0x0303_000b, "MAXLINKERR", "max links negotiation failed"),
    (0x0304_0000, "MODEUNSUPP", "SMC modes do not match"),
    (0x0305_0000, "RMBE_EC",    "peer has eyecatcher in RMBE"),
    (0x0306_0000, "OPTUNSUPP",  "unsupported socket option (the fallback switch)"),
    (0x0307_0000, "DIFFPREFIX", "IP prefix / subnet mismatch"),
    (0x0308_0000, "GETVLANERR", "cannot get VLAN id"),
    (0x0309_0000, "ISMVLANERR", "cannot register VLAN id on ISM"),
    (0x030a_0000, "NOACTLINK",  "no active SMC-R link"),
    (0x030b_0000, "NOSRVLINK",  "SMC-R link from server not found"),
    (0x030c_0000, "VERSMISMAT", "SMC version mismatch"),
    (0x030d_0000, "MAX_DMB",    "SMC-D DMB limit exceeded"),
    (0x030e_0000, "NOROUTE",    "SMC-Rv2: no route to peer"),
    (0x030f_0000, "NOINDIRECT", "SMC-Rv2: direct/indirect mismatch"),
    (0x0400_0000, "SYNCERR",    "synchronisation error"),
    (0x0500_0000, "PEERDECL",   "peer declined"),
    (0x0999_0000, "INTERR",     "internal error"),
    (0x0999_0001, "ERR_RTOK",   "rtoken handling failed"),
    (0x0999_0002, "ERR_RDYLNK", "ib ready link failed"),
    (0x0999_0003, "ERR_REGBUF", "buffer registration failed"),
];

impl DeclineCode {
    pub const NONE: DeclineCode = DeclineCode(0);
    pub const PEERNOSMC: DeclineCode = DeclineCode(0x0301_0000);
    pub const NOSMCDEV: DeclineCode = DeclineCode(0x0303_0000);
    pub const OPTUNSUPP: DeclineCode = DeclineCode(0x0306_0000);

    fn entry(self) -> Option<&'static (u32, &'static str, &'static str)> {
        TABLE.iter().find(|e| e.0 == self.0)
    }

    /// The short name (`OPTUNSUPP`), `None` for 0 and for codes not in the table.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|e| e.1)
    }

    /// A sentence for people.
    pub fn description(self) -> &'static str {
        if self.0 == 0 {
            return "none";
        }
        self.entry().map_or("unknown code", |e| e.2)
    }

    /// Looks a name up (case-insensitive, with or without the `SMC_CLC_DECL_` prefix).
    pub fn from_name(name: &str) -> Option<DeclineCode> {
        let n = name.trim();
        let n = n
            .strip_prefix("SMC_CLC_DECL_")
            .or_else(|| n.strip_prefix("smc_clc_decl_"))
            .unwrap_or(n);
        TABLE
            .iter()
            .find(|e| e.1.eq_ignore_ascii_case(n))
            .map(|e| DeclineCode(e.0))
    }

    /// Every named code.
    pub fn all() -> impl Iterator<Item = DeclineCode> {
        TABLE.iter().map(|e| DeclineCode(e.0))
    }
}

impl fmt::Display for DeclineCode {
    /// The name, `none` for 0, or `unknown(0x…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.name()) {
            (0, _) => f.write_str("none"),
            (_, Some(n)) => f.write_str(n),
            (c, None) => write!(f, "unknown(0x{c:08x})"),
        }
    }
}

impl serde::Serialize for DeclineCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("DeclineCode", 3)?;
        st.serialize_field("code", &format!("0x{:08x}", self.0))?;
        st.serialize_field("name", &self.to_string())?;
        st.serialize_field("description", self.description())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unknowns_and_lookup() {
        assert_eq!(DeclineCode(0x0306_0000).to_string(), "OPTUNSUPP");
        assert_eq!(DeclineCode(0x0301_0000).to_string(), "PEERNOSMC");
        assert_eq!(DeclineCode(0x0303_0000).to_string(), "NOSMCDEV");
        assert_eq!(DeclineCode(0).to_string(), "none");
        assert_eq!(DeclineCode(0x0306_0001).to_string(), "unknown(0x03060001)");
        assert_eq!(
            DeclineCode::from_name("smc_clc_decl_optunsupp"),
            Some(DeclineCode::OPTUNSUPP)
        );
        assert_eq!(DeclineCode::from_name("nope"), None);
        let mut codes: Vec<_> = DeclineCode::all().map(|c| c.0).collect();
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n, "codes are unique");
        let v = serde_json::to_value(DeclineCode::OPTUNSUPP).unwrap();
        assert_eq!(v["code"], "0x03060000");
        assert_eq!(v["name"], "OPTUNSUPP");
    }
}

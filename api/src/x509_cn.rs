//! The subject CN of an X.509 certificate, read with a minimal DER walker: this is
//! all berthd needs from a certificate rustls has already verified, and a full
//! X.509 parser would be a large dependency for one field.

/// One DER element: (tag, contents, rest).
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The (last) CN attribute of the certificate's subject, if any.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // tbsCertificate: [0] version (optional), serial, signature, issuer, validity, subject.
    let mut rest = tbs;
    let (tag, _, r) = element(rest)?;
    rest = if tag == 0xa0 { element(r)?.2 } else { r };
    for _ in 0..3 {
        rest = element(rest)?.2; // signature, issuer, validity
    }
    let (tag, mut name, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut cn = None;
    while !name.is_empty() {
        let (tag, mut set, r) = element(name)?;
        name = r;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, atv, r) = element(set)?;
            set = r;
            let (tag, oid, r) = element(atv)?;
            if tag == OID && oid == CN_OID {
                let (tag, value, _) = element(r)?;
                // UTF8String, PrintableString, IA5String, T61String.
                if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    cn = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
    }
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncation_give_none_not_a_panic() {
        assert_eq!(subject_cn(&[]), None);
        assert_eq!(subject_cn(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_cn(&[0x30, 0x03, 0x30, 0x01]), None);
        for n in 0..64 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = subject_cn(&b);
        }
    }
}

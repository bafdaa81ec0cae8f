//! The page's two languages: Vietnamese (the default) and English; dates in each language's
//! format, times in Asia/Ho_Chi_Minh (UTC+07:00 all year: Vietnam keeps no daylight saving).

use vault::Timestamp;

/// A language of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Tiếng Việt.
    Vi,
    /// English.
    En,
}

/// Offset of Asia/Ho_Chi_Minh from UTC, seconds.
pub const HO_CHI_MINH: i64 = 7 * 3600;

/// The texts of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum K {
    AppName,
    Navigation,
    MyDocuments,
    Sharing,
    AccessLog,
    MyData,
    SignIn,
    SignOut,
    Welcome,
    Intro,
    Continue,
    Error,
    SignInFailed,
    CsrfRefused,
    NotFound,
    Forbidden,
    Invalid,
    Unavailable,
    NoDocuments,
    Type,
    Title,
    Issuer,
    Validity,
    Status,
    Details,
    Download,
    Delete,
    SignedBy,
    Verified,
    OwnUpload,
    Valid,
    Expired,
    Revoked,
    NotYetValid,
    Agency,
    ProcedureCode,
    Purpose,
    DocumentTypes,
    DocumentTypesHint,
    Documents,
    ExpiresOn,
    MaximumUses,
    Share,
    Review,
    ReviewIntro,
    Confirm,
    Back,
    Revoke,
    Receipt,
    Uses,
    Active,
    Exhausted,
    NoGrants,
    NewGrant,
    Grants,
    When,
    Who,
    Action,
    Document,
    Grant,
    Outcome,
    Allowed,
    Refused,
    Filter,
    From,
    To,
    AnyAgency,
    Next,
    View,
    FirstPage,
    BadFilter,
    Proven,
    NotProven,
    NoEntries,
    You,
    Operator,
    ExportMyData,
    ExportIntro,
    EraseMyVault,
    EraseIntro,
    EraseType,
    EraseWord,
    Erased,
    EraseReceipt,
    Unlimited,
    Granted,
    IssuedAt,
    Reference,
    MediaType,
    Size,
    ContentDigest,
    DepositedAt,
    Reaches,
}

impl Lang {
    /// `vi` or `en`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vi" => Some(Self::Vi),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    /// The BCP 47 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Vi => "vi",
            Self::En => "en",
        }
    }

    /// A date (day) in this language's format, in Asia/Ho_Chi_Minh.
    pub fn date(self, t: Timestamp) -> String {
        let (y, m, d, _, _) = local(t);
        match self {
            Self::Vi => format!("{d:02}/{m:02}/{y}"),
            Self::En => format!("{d} {} {y}", MONTHS[(m - 1) as usize]),
        }
    }

    /// A date and time in this language's format, in Asia/Ho_Chi_Minh.
    pub fn datetime(self, t: Timestamp) -> String {
        let (_, _, _, hh, mm) = local(t);
        match self {
            Self::Vi => format!("{hh:02}:{mm:02} {} (giờ Việt Nam)", self.date(t)),
            Self::En => format!("{} {hh:02}:{mm:02} (Vietnam time)", self.date(t)),
        }
    }

    /// The text for `k`.
    pub fn t(self, k: K) -> &'static str {
        let (vi, en) = text(k);
        match self {
            Self::Vi => vi,
            Self::En => en,
        }
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Year, month, day, hour, minute of `t` in Asia/Ho_Chi_Minh.
fn local(t: Timestamp) -> (i32, u8, u8, u8, u8) {
    match time::OffsetDateTime::from_unix_timestamp(t.unix().saturating_add(HO_CHI_MINH)) {
        Ok(d) => (d.year(), d.month() as u8, d.day(), d.hour(), d.minute()),
        Err(_) => (1970, 1, 1, 0, 0),
    }
}

/// The last instant of a local (Asia/Ho_Chi_Minh) date `YYYY-MM-DD`, as a timestamp: a grant
/// "until 31/12" holds through that whole day in Vietnam.
pub fn end_of_local_day(date: &str) -> Option<Timestamp> {
    let t = Timestamp::parse(&format!("{}T23:59:59Z", date.trim())).ok()?;
    Timestamp::from_unix(t.unix() - HO_CHI_MINH)
}

/// The first instant of a local date `YYYY-MM-DD`.
pub fn start_of_local_day(date: &str) -> Option<Timestamp> {
    let t = Timestamp::parse(&format!("{}T00:00:00Z", date.trim())).ok()?;
    Timestamp::from_unix(t.unix() - HO_CHI_MINH)
}

fn text(k: K) -> (&'static str, &'static str) {
    match k {
        K::AppName => ("Kho dữ liệu công dân", "Citizen's vault"),
        K::Navigation => ("Điều hướng", "Navigation"),
        K::MyDocuments => ("Giấy tờ của tôi", "My documents"),
        K::Sharing => ("Chia sẻ", "Sharing"),
        K::AccessLog => ("Nhật ký truy cập", "Access log"),
        K::MyData => ("Dữ liệu của tôi", "My data"),
        K::SignIn => ("Đăng nhập", "Sign in"),
        K::SignOut => ("Đăng xuất", "Sign out"),
        K::Welcome => ("Chào mừng", "Welcome"),
        K::Intro => (
            "Xem giấy tờ Nhà nước lưu về bạn, chia sẻ cho một thủ tục, thu hồi, và xem ai đã truy cập.",
            "See what the state holds about you, share it for one procedure, withdraw it, and see who looked.",
        ),
        K::Continue => ("Tiếp tục", "Continue"),
        K::Error => ("Có lỗi", "Something went wrong"),
        K::SignInFailed => ("Đăng nhập không thành công. Hãy thử lại.", "Sign-in failed. Please try again."),
        K::CsrfRefused => (
            "Biểu mẫu đã hết hạn hoặc không đến từ trang này. Hãy mở lại trang và thử lại.",
            "This form has expired or did not come from this page. Open the page again and retry.",
        ),
        K::NotFound => ("Không tìm thấy.", "Not found."),
        K::Forbidden => ("Bạn không có quyền làm việc này.", "You may not do this."),
        K::Invalid => ("Thông tin chưa hợp lệ", "Please check what you entered"),
        K::Unavailable => {
            ("Dịch vụ tạm thời không sẵn sàng. Hãy thử lại sau.", "The service is unavailable. Please try later.")
        }
        K::NoDocuments => ("Chưa có giấy tờ nào.", "No documents yet."),
        K::Type => ("Loại", "Type"),
        K::Title => ("Tên", "Title"),
        K::Issuer => ("Cơ quan cấp", "Issuer"),
        K::Validity => ("Hiệu lực", "Validity"),
        K::Status => ("Trạng thái", "Status"),
        K::Details => ("Chi tiết", "Details"),
        K::Download => ("Tải về", "Download"),
        K::Delete => ("Xoá", "Delete"),
        K::SignedBy => ("Ký bởi", "Signed by"),
        K::Verified => ("đã xác minh", "verified"),
        K::OwnUpload => ("Bạn tự tải lên, chưa xác minh", "Your own upload, not verified"),
        K::Valid => ("Còn hiệu lực", "Valid"),
        K::Expired => ("Hết hạn", "Expired"),
        K::Revoked => ("Đã thu hồi", "Revoked"),
        K::NotYetValid => ("Chưa có hiệu lực", "Not yet valid"),
        K::Agency => ("Cơ quan", "Agency"),
        K::ProcedureCode => ("Mã thủ tục", "Procedure code"),
        K::Purpose => ("Mục đích", "Purpose"),
        K::DocumentTypes => ("Loại giấy tờ", "Document types"),
        K::DocumentTypesHint => {
            ("Cách nhau bằng dấu phẩy, ví dụ giay-khai-sinh", "Comma-separated, e.g. giay-khai-sinh")
        }
        K::Documents => ("Giấy tờ cụ thể", "Chosen documents"),
        K::ExpiresOn => ("Hết hạn vào ngày", "Expires on"),
        K::MaximumUses => ("Số lần dùng tối đa", "Maximum uses"),
        K::Share => ("Chia sẻ", "Share"),
        K::Review => ("Xem lại trước khi chia sẻ", "Review what you share"),
        K::ReviewIntro => {
            ("Cơ quan sẽ được xem đúng những gì dưới đây:", "The agency will be able to read exactly this:")
        }
        K::Confirm => ("Xác nhận", "Confirm"),
        K::Back => ("Quay lại", "Back"),
        K::Revoke => ("Thu hồi", "Revoke"),
        K::Receipt => ("Biên nhận đồng ý", "Consent receipt"),
        K::Uses => ("Đã dùng", "Uses"),
        K::Active => ("Đang hiệu lực", "Active"),
        K::Exhausted => ("Đã dùng hết", "Used up"),
        K::NoGrants => ("Bạn chưa chia sẻ gì.", "You have shared nothing."),
        K::NewGrant => ("Chia sẻ mới", "Share something"),
        K::Grants => ("Những gì bạn đã chia sẻ", "What you have shared"),
        K::When => ("Thời gian", "When"),
        K::Who => ("Ai", "Who"),
        K::Action => ("Việc", "What"),
        K::Document => ("Giấy tờ", "Document"),
        K::Grant => ("Theo chia sẻ", "Grant"),
        K::Outcome => ("Kết quả", "Outcome"),
        K::Allowed => ("Được phép", "Allowed"),
        K::Refused => ("Bị từ chối", "Refused"),
        K::Filter => ("Lọc", "Filter"),
        K::From => ("Từ ngày", "From"),
        K::To => ("Đến ngày", "To"),
        K::AnyAgency => ("Tất cả", "Anyone"),
        K::Next => ("Trang sau", "Next page"),
        K::FirstPage => ("Trang đầu", "First page"),
        K::View => ("Xem", "View"),
        K::BadFilter => (
            "Bộ lọc không hợp lệ: ngày theo dạng YYYY-MM-DD, \"Từ ngày\" không sau \"Đến ngày\"",
            "Invalid filter: dates are YYYY-MM-DD and From is not after To",
        ),
        K::Proven => (
            "Đã chứng minh: máy chủ đã kiểm tra từng dòng trên trang này nằm trong nhật ký đã ký của kho.",
            "Proven: the server verified that every entry on this page is in the vault's signed log.",
        ),
        K::NotProven => (
            "Chưa chứng minh được các dòng trên trang này nằm trong nhật ký đã ký.",
            "The entries on this page could not be proven in the signed log.",
        ),
        K::NoEntries => ("Không có dòng nào.", "No entries."),
        K::You => ("Bạn", "You"),
        K::Operator => ("Người vận hành", "The operator"),
        K::ExportMyData => ("Xuất dữ liệu của tôi", "Export my data"),
        K::ExportIntro => (
            "Tải về một tệp tar chứa mọi giấy tờ, chia sẻ và nhật ký của bạn, có thể tự kiểm tra.",
            "Download one tar file with all your documents, grants and log, which you can verify yourself.",
        ),
        K::EraseMyVault => ("Xoá kho của tôi", "Erase my vault"),
        K::EraseIntro => (
            "Xoá vĩnh viễn mọi giấy tờ và chia sẻ của bạn. Không thể hoàn tác. Bạn sẽ nhận biên nhận đã ký.",
            "Erases all your documents and grants for good. This cannot be undone. You get a signed receipt.",
        ),
        K::EraseType => ("Gõ chữ sau để xác nhận", "Type this word to confirm"),
        K::EraseWord => ("XOA", "ERASE"),
        K::Erased => ("Kho của bạn đã được xoá.", "Your vault is erased."),
        K::EraseReceipt => ("Biên nhận xoá đã ký", "Signed erasure receipt"),
        K::Unlimited => ("không giới hạn", "no limit"),
        K::Granted => ("Đã chia sẻ.", "Shared."),
        K::IssuedAt => ("Ngày cấp", "Issued"),
        K::Reference => ("Số hiệu", "Reference"),
        K::MediaType => ("Định dạng", "Format"),
        K::Size => ("Kích thước (byte)", "Size (bytes)"),
        K::ContentDigest => ("Mã băm nội dung", "Content digest"),
        K::DepositedAt => ("Ngày lưu vào kho", "Stored"),
        K::Reaches => ("Giấy tờ sẽ được xem (hiện nay)", "Documents it reaches today"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_in_each_languages_format_and_in_ho_chi_minh_time() {
        // 2024-12-31T18:30:00Z is 01:30 on 1 January 2025 in Vietnam.
        let t = Timestamp::parse("2024-12-31T18:30:00Z").unwrap();
        assert_eq!(Lang::Vi.date(t), "01/01/2025");
        assert_eq!(Lang::En.date(t), "1 January 2025");
        assert!(Lang::Vi.datetime(t).starts_with("01:30 01/01/2025"));
        assert!(Lang::En.datetime(t).starts_with("1 January 2025 01:30"));
        assert_eq!(end_of_local_day("2025-01-01").unwrap().to_string(), "2025-01-01T16:59:59Z");
        assert_eq!(start_of_local_day("2025-01-01").unwrap().to_string(), "2024-12-31T17:00:00Z");
        assert!(end_of_local_day("31/12/2025").is_none());
    }
}
